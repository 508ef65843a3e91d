"""Back-translation: the LLM writes each kept function's instruction back from its code, and an
NLI judge compares it with the original (premise: original, hypothesis: back-translation).
An instruction left without functions is dropped. Which functions are dropped is the `rule`:

- "contradiction": those whose back-translation contradicts the instruction. A function that
  checks something else than asked, without conflict, passes: "your reply must not contain
  single quotes" back-translated from a checker of "put your entire reply inside double
  quotation marks" is neutral, not a contradiction.
- "equivalence": those whose back-translation does not say the same as the instruction:
  entailment both ways (instruction -> back-translation, then back-translation ->
  instruction). Mutual entailment is what "the same constraint" means, and it needs nothing
  of the judge but NLI labels, so a local NLI model (nli_model_path) judges it as well as the
  LLM. The second direction is asked only when the first is entailment; the recorded label is
  the first that is not entailment (else entailment), and a neutral one is counted as
  `not_equivalent`.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

from engine.config import Config
from engine.parsing import parse_back_translation
from engine.prompting import render
from engine.records import BackTranslation, Verifier, VerifiedInstruction
from engine.roles import JUDGE
from engine.stage import Context
from engine.stages.base import Sampling, ask, judge_sampling, tally
from engine.stages.nli import LLMJudge, NLIJudge, TransformersNLI

RULES = ("contradiction", "equivalence")


class BackTranslateStage:
    """VerifiedInstruction -> VerifiedInstruction with contradicted (or, by `rule`, not
    equivalent) functions removed.

    `nli`: the judge of (original, back-translation); `sampling`: the back-translation request;
    `rule`: one of RULES (module docstring). With `enabled` off, items pass through unchanged.
    """

    name = "backtranslate"

    @classmethod
    def from_config(cls, cfg: Config) -> BackTranslateStage:
        """The NLI judge is a local model when nli_model_path names one, else the pipeline's LLM."""
        b, judge = cfg.backtranslate, judge_sampling(cfg)
        if not b.enabled:           # no judge is loaded for a stage that passes through
            return cls(nli=LLMJudge(judge), sampling=judge, enabled=False, rule=b.rule)
        nli = TransformersNLI(b.nli_model_path, b.nli_device) if b.nli_model_path else LLMJudge(judge)
        return cls(nli=nli, sampling=judge, rule=b.rule)

    def __init__(self, *, nli: NLIJudge, sampling: Sampling, enabled: bool = True,
                 rule: str = "contradiction") -> None:
        if rule not in RULES:
            raise ValueError(f"back-translation rule {rule!r}: one of {', '.join(RULES)}")
        self.nli = nli
        self.sampling = sampling
        self.enabled = enabled
        self.rule = rule

    async def process(self, item: VerifiedInstruction, ctx: Context) -> list[VerifiedInstruction]:
        if not self.enabled:
            return [item]
        verdicts = await asyncio.gather(*(self._check(ctx, item.instruction.text, f)
                                          for f, _ in item.functions))
        kept, translations, dropped = [], [], Counter()
        for (f, accuracy), (translation, reason) in zip(item.functions, verdicts):
            if translation is not None:
                translations.append(translation)
            if reason:
                dropped[reason] += 1
            else:
                kept.append((f, accuracy))
        tally(ctx, f"{self.name}.function", len(kept), dropped)
        if not kept:
            ctx.funnel.drop(self.name, "no_function_left")
            return []
        return [replace(item, functions=tuple(kept), back_translations=tuple(translations))]

    async def _check(self, ctx: Context, original: str,
                     function: Verifier) -> tuple[BackTranslation | None, str | None]:
        answers = await ask(ctx, render("backtranslate", code=function.code.rstrip()), self.sampling, role=JUDGE)
        text = parse_back_translation(answers[0].text) if answers else ""
        if not text:
            return None, "empty_back_translation"
        label = await self.nli.classify(original, text, ctx)
        if label == "entailment" and self.rule == "equivalence":
            label = await self.nli.classify(text, original, ctx)
        if label is None:
            return None, "unparsable_nli"
        translation = BackTranslation(verifier_id=function.id, text=text, label=label)
        if label == "contradiction":
            return translation, "contradiction"
        return translation, ("not_equivalent" if self.rule == "equivalence" and label != "entailment" else None)
