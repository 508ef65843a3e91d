"""Back-translation: the LLM writes each kept function's instruction back from its code, and an
NLI judge compares it with the original (premise: original, hypothesis: back-translation).
A function whose back-translation contradicts the instruction is dropped; an instruction left
without functions is dropped.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

from engine.config import Config
from engine.parsing import parse_back_translation
from engine.prompting import render
from engine.records import BackTranslation, Verifier, VerifiedInstruction
from engine.stage import Context
from engine.stages.base import ask, settings, tally
from engine.stages.nli import LLMJudge, NLIJudge, TransformersNLI


class BackTranslateStage:
    """VerifiedInstruction -> VerifiedInstruction with contradicted functions removed.

    `nli`: the judge; None picks TransformersNLI when config.nli_model_path is set, else LLMJudge.
    With config.backtranslate off, items pass through unchanged.
    """

    name = "backtranslate"

    def __init__(self, nli: NLIJudge | None = None) -> None:
        self._nli = nli
        self._loading = asyncio.Lock()

    async def judge(self, cfg: Config) -> NLIJudge:
        async with self._loading:             # load a local model once, off the event loop
            if self._nli is None:
                if cfg.nli_model_path:
                    self._nli = await asyncio.to_thread(TransformersNLI, cfg.nli_model_path, cfg.nli_device)
                else:
                    self._nli = LLMJudge()
        return self._nli

    async def process(self, item: VerifiedInstruction, ctx: Context) -> list[VerifiedInstruction]:
        cfg = settings(ctx)
        if not cfg.backtranslate:
            return [item]
        nli = await self.judge(cfg)
        verdicts = await asyncio.gather(*(self._check(ctx, cfg, nli, item.instruction.text, f)
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

    async def _check(self, ctx: Context, cfg: Config, nli: NLIJudge, original: str,
                     function: Verifier) -> tuple[BackTranslation | None, str | None]:
        answers = await ask(ctx, render("backtranslate", code=function.code.rstrip()), n=1,
                            temperature=cfg.judge_temperature, max_tokens=cfg.judge_max_tokens)
        text = parse_back_translation(answers[0].text) if answers else ""
        if not text:
            return None, "empty_back_translation"
        label = await nli.classify(original, text, ctx)
        if label is None:
            return None, "unparsable_nli"
        translation = BackTranslation(verifier_id=function.id, text=text, label=label)
        return translation, ("contradiction" if label == "contradiction" else None)
