"""Responses: K sampled answers per (instruction, query), each verified by all the instruction's
functions in ONE executor batch. Pass rate = share of functions returning exactly True
(an error, timeout or non-bool is a fail). A response is kept when its pass rate is MORE
than `pass_threshold`; failing responses stay in the record as DPO rejects.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from engine.llm import Completion
from engine.records import FunctionResult, QueryResult, QueryTask, ResponseRecord, Verifier
from engine.stage import Context
from engine.stages.base import ask, outcome_bool, settings, tally
from sandbox_pool import Outcome


def grade(completions: Sequence[Completion], functions: Sequence[Verifier], results: Sequence[Sequence[Outcome]],
          pass_threshold: float) -> tuple[list[ResponseRecord], Counter]:
    """Records for each completion from results[i][j] (function i on completion j), and drop reasons."""
    records: list[ResponseRecord] = []
    dropped: Counter[str] = Counter()
    for j, c in enumerate(completions):
        per_function = tuple(
            FunctionResult(verifier_id=f.id, status=res[j].status,
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
    """QueryTask -> QueryResult with all K responses; dropped when none passes."""

    name = "responses"

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
        if not kept:
            ctx.funnel.drop(self.name, "no_response_passed")
            return []
        return [QueryResult(task=item, responses=tuple(records), model=getattr(ctx.llm, "model", ""))]
