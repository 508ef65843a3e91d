"""Responses: K sampled answers per (instruction, query), each verified by all the instruction's
functions in ONE executor batch. Pass rate = share of functions returning exactly True
(an error, timeout or non-bool is a fail). A response is kept when its pass rate is MORE
than `pass_threshold`; failing responses stay in the record as DPO rejects.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

from engine.llm import Completion
from engine.records import (FunctionResult, QueryResult, QueryTask, ResponseRecord, SampledPrompt,
                            Verifier)
from engine.stage import Context
from engine.stages.base import Sampling, ask, outcome_bool, tally
from sandbox_pool import Outcome

SAMPLED = "sampled"     # the state-store label of every graded task (see ResponseStage.on_sampled)


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
    """QueryTask -> QueryResult with all K responses; dropped when none passes.

    `sampling`: the response request (its n is K); `pass_threshold`: see the module docstring;
    `on_sampled`: given every graded task's pass rates, the ones where no response passed too
    (a GRPO prompt set needs the too-hard prompts); None: nothing is recorded."""

    name = "responses"

    def __init__(self, *, sampling: Sampling, pass_threshold: float,
                 on_sampled: Callable[[SampledPrompt], None] | None = None) -> None:
        self.sampling = sampling
        self.pass_threshold = pass_threshold
        self.on_sampled = on_sampled

    async def process(self, item: QueryTask, ctx: Context) -> list[QueryResult]:
        functions = item.instruction.verifiers
        if not functions:
            ctx.funnel.drop(self.name, "no_functions")
            return []
        completions = await ask(ctx, item.prompt, self.sampling)
        if not completions:
            ctx.funnel.drop(self.name, "no_completions")
            return []
        texts = [c.text for c in completions]
        results = await ctx.executor.evaluate_many([(f.code, texts) for f in functions])
        records, dropped = grade(completions, functions, results, self.pass_threshold)
        kept = sum(r.passed for r in records)
        tally(ctx, f"{self.name}.sample", kept, dropped)
        model = getattr(ctx.llm, "model", "")
        if self.on_sampled is not None:          # kept or not: the GRPO estimates
            self.on_sampled(SampledPrompt(item, tuple(r.pass_rate for r in records), model))
        result = QueryResult(task=item, responses=tuple(records), model=model)
        if not kept:
            ctx.funnel.drop(self.name, "no_response_passed")
            return []
        return [result]
