"""Responses: K sampled answers per (instruction, query), each verified by all the instruction's
functions in ONE executor batch. Pass rate = share of functions returning exactly True
(an error, timeout or non-bool is a fail). A response is kept when its pass rate is MORE
than `pass_threshold`; failing responses stay in the record as DPO rejects.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from engine.llm import Completion
from engine.records import (FunctionResult, QueryResult, QueryTask, ResponseRecord, SampledPrompt,
                            Verifier)
from engine.stage import Context
from engine.stages.base import ask, outcome_bool, settings, tally

SAMPLED = "sampled"     # the state-store label of every graded task (see ResponseStage.record)


def grade(completions: Sequence[Completion], functions: Sequence[Verifier], results: Sequence[Sequence],
          pass_threshold: float) -> tuple[list[ResponseRecord], Counter]:
    """Records for each completion from results[i][j] (function i on completion j), and drop reasons."""
    records: list[ResponseRecord] = []
    dropped: Counter[str] = Counter()
    for j, c in enumerate(completions):
        per_function = tuple(
            FunctionResult(verifier_id=f.id, status=getattr(res[j], "status", "missing"),
                           value=outcome_bool(res[j]))
            for f, res in zip(functions, results))
        rate = sum(r.passed for r in per_function) / len(per_function)
        reason = ("empty" if not c.text.strip() else
                  "truncated" if c.finish_reason == "length" else
                  "low_pass_rate" if not rate > pass_threshold else None)
        if reason:
            dropped[reason] += 1
        records.append(ResponseRecord(text=c.text, pass_rate=rate, results=per_function,
                                      passed=reason is None, finish_reason=c.finish_reason))
    return records, dropped


class ResponseStage:
    """QueryTask -> QueryResult with all K responses; dropped when none passes.

    `record`: a state-store label under which every graded task is stored, the ones where no
    response passed too (a GRPO prompt set needs the too-hard prompts); None stores nothing."""

    name = "responses"

    def __init__(self, record: str | None = None) -> None:
        self.record = record

    async def process(self, item: QueryTask, ctx: Context) -> list[QueryResult]:
        cfg = settings(ctx)
        functions = item.instruction.verifiers
        if not functions:
            ctx.funnel.drop(self.name, "no_functions")
            return []
        completions = await ask(ctx, item.prompt, n=cfg.responses_k,
                                temperature=cfg.response_temperature, max_tokens=cfg.response_max_tokens)
        if not completions:
            ctx.funnel.drop(self.name, "no_completions")
            return []
        texts = [c.text for c in completions]
        results = await ctx.executor.evaluate_many([(f.code, texts) for f in functions])
        records, dropped = grade(completions, functions, results, cfg.pass_threshold)
        kept = sum(r.passed for r in records)
        tally(ctx, f"{self.name}.sample", kept, dropped)
        model = getattr(ctx.llm, "model", "")
        if self.record is not None and ctx.store is not None:   # kept or not: the GRPO estimates
            sampled = SampledPrompt(item, tuple(r.pass_rate for r in records), model)
            ctx.store.put_records([sampled], self.record)
        result = QueryResult(task=item, responses=tuple(records), model=model)
        if not kept:
            ctx.funnel.drop(self.name, "no_response_passed")
            return []
        return [result]
