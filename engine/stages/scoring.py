"""Scoring: the LLM rates how well each kept response serves the query under the instruction
(1-10, "Score: N" on the last line). Responses below `score_min` are not used for SFT;
a result with no response at or above it is dropped.
"""
from __future__ import annotations

import asyncio
from collections import Counter

from engine.parsing import parse_score
from engine.prompting import render
from engine.records import QueryResult, QueryTask, ResponseRecord
from engine.stage import Context
from engine.stages.base import Sampling, ask, tally

UNSCORED = 0   # stored score when the judge's answer had no readable score


class ScoreStage:
    """QueryResult -> QueryResult with `score` set on every passed response (one that has a
    score already keeps it, and the judge is not asked again).

    `sampling`: the judge request; `score_min`: the lowest score kept. With `enabled` off,
    items pass through unchanged."""

    name = "scoring"

    def __init__(self, *, sampling: Sampling, score_min: int, enabled: bool = True) -> None:
        self.sampling = sampling
        self.score_min = score_min
        self.enabled = enabled

    async def process(self, item: QueryResult, ctx: Context) -> list[QueryResult]:
        if not self.enabled:
            return [item]
        passed = [i for i, r in enumerate(item.responses) if r.passed]
        scores = await asyncio.gather(*(self._score_of(ctx, item.task, item.responses[i]) for i in passed))
        responses = list(item.responses)
        dropped: Counter[str] = Counter()
        kept = 0
        for i, score in zip(passed, scores):
            responses[i] = responses[i].with_score(UNSCORED if score is None else score)
            if score is None:
                dropped["unparsable_score"] += 1
            elif score < self.score_min:
                dropped["low_score"] += 1
            else:
                kept += 1
        tally(ctx, f"{self.name}.response", kept, dropped)
        if not kept:
            reason = "unparsable_score" if dropped["unparsable_score"] == len(passed) and passed else "low_score"
            ctx.funnel.drop(self.name, reason)
            return []
        return [QueryResult(task=item.task, responses=tuple(responses), model=item.model)]

    async def _score_of(self, ctx: Context, task: QueryTask, response: ResponseRecord) -> int | None:
        if response.score is not None:      # scored already (a file `autoif stage score` reads)
            return response.score
        return await self.score(ctx, task, response)

    async def score(self, ctx: Context, task: QueryTask, response: ResponseRecord) -> int | None:
        """The judge's 1-10 score of one response, None when unreadable."""
        prompt = render("score", instruction=task.instruction.instruction.text, query=task.query,
                        response=response.text)
        answers = await ask(ctx, prompt, self.sampling)
        return parse_score(answers[0].text) if answers else None
