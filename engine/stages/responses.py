"""Responses: K sampled answers per (instruction, query), each verified by all the instruction's
functions in ONE executor batch. Pass rate = share of functions returning exactly True
(an error, timeout or non-bool is a fail). A response is kept when its pass rate is MORE
than `pass_threshold`; failing responses stay in the record as DPO rejects.

With `plain` sampling set (config.plain_rejects), the same batch also verifies a plain reply
to the query alone: what the model writes when nobody states the constraint. A model that
keeps an easy constraint in all K samples leaves no failing sample to pair with; the plain
reply usually breaks it, and then it is the pair's reject. It is never an SFT answer.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from typing import Callable, Sequence

from engine.config import Config
from engine.llm import Completion
from engine.records import (FunctionResult, QueryResult, QueryTask, ResponseRecord,
                            Verifier, plain_reject_flaw)
from engine.roles import RESPONDER
from engine.stage import Context
from engine.stages.base import Sampling, ask, ask_plain, outcome_bool, tally
from sandbox_pool import Outcome

SAMPLED = "sampled"     # the state-store label of every graded task (see ResponseStage.on_graded)


def grade(completions: Sequence[Completion], functions: Sequence[Verifier], results: Sequence[Sequence[Outcome]],
          pass_threshold: float, per_constraint: Sequence[int] = ()) -> tuple[list[ResponseRecord], Counter]:
    """Records for each completion from results[i][j] (function i on completion j), and drop reasons.

    `per_constraint`: a composed prompt's function counts, constraint by constraint (the
    functions in that order); each constraint passes by the usual rule over its own functions,
    the pass rate is the share of constraints met and a response passes when all are met."""
    records: list[ResponseRecord] = []
    dropped: Counter[str] = Counter()
    for j, c in enumerate(completions):
        per_function = tuple(
            FunctionResult(verifier_id=f.id, status=res[j].status,
                           value=outcome_bool(res[j]))
            for f, res in zip(functions, results))
        verdicts = constraint_verdicts(per_function, per_constraint, pass_threshold)
        if verdicts:
            rate = sum(verdicts) / len(verdicts)
            met = all(verdicts)
        else:
            rate = sum(r.passed for r in per_function) / len(per_function)
            met = rate > pass_threshold
        reason = ("empty" if not c.text.strip() else
                  "truncated" if c.finish_reason == "length" else
                  "low_pass_rate" if not met else None)
        if reason:
            dropped[reason] += 1
        records.append(ResponseRecord(text=c.text, pass_rate=rate, results=per_function,
                                      passed=reason is None, finish_reason=c.finish_reason, verdicts=verdicts))
    return records, dropped


def constraint_verdicts(per_function: Sequence[FunctionResult], per_constraint: Sequence[int],
                        pass_threshold: float) -> tuple[bool, ...]:
    """Whether each constraint passed: more than `pass_threshold` of its own functions did
    (empty when the prompt has one constraint)."""
    out, start = [], 0
    for n in per_constraint:
        own = per_function[start:start + n]
        start += n
        out.append(bool(own) and sum(r.passed for r in own) / len(own) > pass_threshold)
    return tuple(out)


def grade_plain(completions: Sequence[Completion], functions: Sequence[Verifier],
                results: Sequence[Sequence[Outcome]], per_constraint: Sequence[int] = (),
                pass_threshold: float = 1.0) -> tuple[list[ResponseRecord], Counter]:
    """Plain replies as DPO rejects, with the reasons some cannot be one (plain_reject_flaw).
    None is `passed`: none is ever an SFT answer. One constraint: graded at a pass threshold of 1
    (its pass rate is the share of functions either way); a composed prompt's constraints are
    each judged at `pass_threshold`, the samples' rule, so a plain reply that met one counts."""
    records, _ = grade(completions, functions, results, pass_threshold=pass_threshold if per_constraint else 1.0,
                       per_constraint=per_constraint)
    records = [replace(r, passed=False) if r.passed else r for r in records]
    return records, Counter(flaw for r in records if (flaw := plain_reject_flaw(r)))


class ResponseStage:
    """QueryTask -> QueryResult with all K responses; dropped when none passes.

    `sampling`: the response request (its n is K); `pass_threshold`: see the module docstring;
    `on_graded`: given every graded task's whole result, kept or not: the GRPO prompt set needs
    the too-hard prompts, and `autoif stage verify` a verdict for each response read.
    `plain`: the plain reply's request (module docstring); None: none is asked for."""

    name = "responses"

    @classmethod
    def from_config(cls, cfg: Config,
                    on_graded: Callable[[QueryResult], None] | None = None) -> ResponseStage:
        r, v = cfg.responses, cfg.verifiers
        return cls(sampling=Sampling(r.k, r.temperature, r.max_tokens), pass_threshold=r.pass_threshold,
                   on_graded=on_graded,
                   # the verifier stage's plain case reply, so both share one answer
                   plain=Sampling(1, v.temperature, v.case_max_tokens) if r.plain_rejects else None)

    def __init__(self, *, sampling: Sampling, pass_threshold: float,
                 on_graded: Callable[[QueryResult], None] | None = None,
                 plain: Sampling | None = None) -> None:
        self.sampling = sampling
        self.pass_threshold = pass_threshold
        self.on_graded = on_graded
        self.plain = plain
        # queries of each instruction still generating: while others are, this one's checks tell
        # the pool more of the same functions are coming, so they can share a fork
        self._generating: Counter[str] = Counter()

    async def process(self, item: QueryTask, ctx: Context) -> list[QueryResult]:
        functions = tuple(f for c in item.constraints for f in c.verifiers)
        per_constraint = tuple(len(c.functions) for c in item.constraints) if item.also else ()
        if not functions or 0 in per_constraint:
            ctx.funnel.drop(self.name, "no_functions")
            return []
        key = item.instruction.id if not item.also else tuple(item.instruction_ids)
        self._generating[key] += 1
        try:
            completions, plain = await asyncio.gather(ask(ctx, item.prompt, self.sampling, role=RESPONDER),
                                                       self._plain(ctx, item))
        finally:
            self._generating[key] -= 1
            more_coming = self._generating[key] > 0
            if not more_coming:
                del self._generating[key]
        if not completions:
            ctx.funnel.drop(self.name, "no_completions")
            return []
        k = len(completions)
        texts = [c.text for c in completions] + [c.text for c in plain]
        results = await ctx.executor.evaluate_many([(f.code, texts) for f in functions], more_coming=more_coming)
        records, dropped = grade(completions, functions, [r[:k] for r in results], self.pass_threshold,
                                 per_constraint)
        kept = sum(r.passed for r in records)
        tally(ctx, f"{self.name}.sample", kept, dropped)
        plain_records: list[ResponseRecord] = []
        if plain:
            plain_records, plain_dropped = grade_plain(plain, functions, [r[k:] for r in results], per_constraint,
                                                       self.pass_threshold)
            tally(ctx, f"{self.name}.plain", len(plain_records) - sum(plain_dropped.values()), plain_dropped)
        model = getattr(ctx.llm_for(RESPONDER), "model", "")
        result = QueryResult(task=item, responses=tuple(records), model=model, plain=tuple(plain_records))
        if self.on_graded is not None:          # kept or not
            self.on_graded(result)
        if not kept:
            ctx.funnel.drop(self.name, "no_response_passed")
            return []
        return [result]

    async def _plain(self, ctx: Context, item: QueryTask) -> list[Completion]:
        if self.plain is None:
            return []
        return await ask_plain(ctx, item.query, self.plain)
