"""Verifier audit: reward-hacking trip wires for the kept functions.

A function that will become an RL reward must not pay for text that follows no instruction
at all. After back-translation every kept function is also run, in the sandbox pool, on
degenerate probes: the empty text, the instruction restated, one word repeated, a
10,000-word text and the user query echoed back. A function that accepts more than
`audit_max_accepted` of them is flagged; `audit_action` then keeps it as it is (flag),
halves its weight in rewards (downweight, `audit_weight`) or removes it (drop).

The verdicts travel on the record (`VerifiedInstruction.audits`), so the exports and the
reward service see them; the funnel counts them in rows `audit.function` and `audit.probe`.

Cross-validation runs these probes in the same job as the cases (`probe_inputs`), and passes
what each function returned on the record (`probe_verdicts`), so the audit needs no second
fork per function, which would queue behind other instructions' cross-validation jobs and
hold queries back. Only functions without such verdicts (a resumed run's) are run here.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Sequence

from engine.config import Config
from engine.records import Instruction, Query, VerifiedInstruction, VerifierAudit
from engine.stage import Context
from engine.stages.base import outcome_bool
from engine.stages.queries import run_queries

# the funnel reason for flagged functions, per audit_action
FLAG_REASONS = {"flag": "flagged", "downweight": "flagged_downweighted", "drop": "flagged_dropped"}
PROBES = ("empty", "instruction", "repeated_word", "long_text", "query_echo")
LONG_TEXT_WORDS = 10_000
# Plain words for the long probe: a text of real words, sentences and punctuation, so that a
# function checking only for "many words" passes it and one checking the asked-for form does not.
_VOCABULARY = ("the river carried small boats past the old mill while children watched from "
               "a bridge and their parents talked about the weather market prices and the long "
               "winter that had just ended").split()


def long_text(words: int = LONG_TEXT_WORDS) -> str:
    out, sentence = [], []
    for i in range(words):
        sentence.append(_VOCABULARY[i % len(_VOCABULARY)])
        if len(sentence) == 12 or i == words - 1:
            out.append(sentence[0].capitalize() + " " + " ".join(sentence[1:]) + ".")
            sentence = []
    return " ".join(out)


_LONG = long_text()


def probes(instruction: str, query: str) -> dict[str, str]:
    """The degenerate texts, by name (the order of PROBES)."""
    return {"empty": "", "instruction": instruction, "repeated_word": " ".join(["okay"] * 50),
            "long_text": _LONG, "query_echo": query}


def echo_query(pool: Sequence[Query], instruction_id: str) -> str:
    """A query to echo for this instruction: a stable pick from the run's query set."""
    return pool[int(instruction_id, 16) % len(pool)].text if pool else "Tell me about your day."


def probe_inputs(instruction: Instruction, queries: Sequence[Query]) -> list[str]:
    """The probe texts for this instruction, in the order of PROBES."""
    texts = probes(instruction.text, echo_query(queries, instruction.id))
    return [texts[p] for p in PROBES]


class AuditStage:
    """VerifiedInstruction -> the same with `audits` (and, with action "drop", without the
    flagged functions). Not `enabled`: items pass through unchanged.

    `queries`: the run's query set (one is echoed as a probe); `action`: flag, downweight or
    drop; `max_accepted`: a function is flagged when it accepts more probes than this;
    `weight`: a flagged function's reward weight when the action is downweight."""

    name = "audit"

    @classmethod
    def from_config(cls, cfg: Config, queries: Sequence[Query] | None = None) -> AuditStage:
        a = cfg.audit
        return cls(run_queries(cfg, queries), enabled=a.enabled, action=a.action,
                   max_accepted=a.max_accepted, weight=a.weight)

    def __init__(self, queries: Sequence[Query], *, enabled: bool, action: str, max_accepted: int,
                 weight: float) -> None:
        if action not in FLAG_REASONS:
            raise ValueError(f"audit action {action!r}: one of {', '.join(FLAG_REASONS)}")
        self.queries = list(queries)
        self.enabled, self.action = enabled, action
        self.max_accepted, self.weight = max_accepted, weight

    async def process(self, item: VerifiedInstruction, ctx: Context) -> list[VerifiedInstruction]:
        if not self.enabled or not item.functions:
            return [item]
        verdicts = await self._verdicts(item, ctx)
        audits, kept, accepted_by_probe, flagged_n = [], [], Counter(), 0
        for (f, accuracy), returned in zip(item.functions, verdicts):
            accepted = tuple(p for p, v in zip(PROBES, returned) if v is True)
            accepted_by_probe.update(accepted)
            flagged = len(accepted) > self.max_accepted
            flagged_n += flagged
            weight = self.weight if flagged and self.action == "downweight" else 1.0
            if flagged and self.action == "drop":
                continue
            audits.append(VerifierAudit(f.id, accepted, flagged, weight))
            kept.append((f, accuracy))
        self._count(ctx, len(item.functions), flagged_n, len(kept), self.action, accepted_by_probe)
        if not kept:
            ctx.funnel.drop(self.name, "all_functions_flagged")
            return []
        return [replace(item, functions=tuple(kept), audits=tuple(audits))]

    async def _verdicts(self, item: VerifiedInstruction, ctx: Context) -> list[tuple[bool | None, ...]]:
        """What each function returned on each probe: from cross-validation's job where it ran
        them, else from the pool now."""
        known = dict(item.probe_verdicts)
        missing = [f for f, _ in item.functions if len(known.get(f.id, ())) != len(PROBES)]
        if missing:
            inputs = probe_inputs(item.instruction, self.queries)
            # Urgent: the audit is the last step before this instruction's queries are generated.
            results = await ctx.executor.evaluate_many([(f.code, inputs) for f in missing], urgent=True)
            for f, outcomes in zip(missing, results):
                known[f.id] = tuple(outcome_bool(o) for o in outcomes)
        return [known[f.id] for f, _ in item.functions]

    def _count(self, ctx: Context, n: int, flagged: int, passed_on: int, action: str,
               accepted_by_probe: Counter) -> None:
        f = ctx.funnel
        row = f"{self.name}.function"             # kept: clean; out: passed on (flagged too, unless dropped)
        f.count_in(row, n)
        f.count_kept(row, n - flagged)
        f.count_out(row, passed_on)
        if flagged:
            f.drop(row, FLAG_REASONS[action], flagged)
        row = f"{self.name}.probe"                # one item per (function, probe) check
        accepted = sum(accepted_by_probe.values())
        f.count_in(row, n * len(PROBES))
        f.count_kept(row, n * len(PROBES) - accepted)
        f.count_out(row, n * len(PROBES) - accepted)
        for probe, k in accepted_by_probe.items():
            f.drop(row, f"accepted_{probe}", k)
