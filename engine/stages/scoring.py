"""Scoring: the LLM rates how well each kept response serves the query under the instruction
(1-10, "Score: N" on the last line). Responses below `score_min` are not used for SFT;
a result with no response at or above it is dropped.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

from engine.config import Config
from engine.parsing import parse_score
from engine.prompting import render
from engine.records import QueryResult, QueryTask, ResponseRecord
from engine.roles import JUDGE
from engine.stage import Context
from engine.stages.base import Sampling, ask, judge_sampling, tally

UNSCORED = 0   # stored score when the judge's answer had no readable score, or was not asked
NOT_NEEDED = object()   # `until` responses were kept already: this one is not judged


class ScoreStage:
    """QueryResult -> QueryResult with `score` set on every passed response (one that has a
    score already keeps it, and the judge is not asked again).

    `sampling`: the judge request; `score_min`: the lowest score kept. With `enabled` off,
    items pass through unchanged. `until` > 0: judge passed responses best first (pass rate)
    and stop once `until` are kept; the rest stay unused (stored score 0, counted
    `not_needed`). Exports take one SFT row per query by default, so the judge calls on the
    other passed samples would be spent for nothing; 0 judges every one (the paper)."""

    name = "scoring"

    @classmethod
    def from_config(cls, cfg: Config) -> ScoreStage:
        s = cfg.scoring
        return cls(sampling=judge_sampling(cfg), score_min=s.min, enabled=s.enabled, until=s.until)

    def __init__(self, *, sampling: Sampling, score_min: int, enabled: bool = True, until: int = 0) -> None:
        self.sampling = sampling
        self.score_min = score_min
        self.enabled = enabled
        self.until = until

    async def process(self, item: QueryResult, ctx: Context) -> list[QueryResult]:
        if not self.enabled:
            return [item]
        passed = [i for i, r in enumerate(item.responses) if r.passed]
        if self.until:
            passed.sort(key=lambda i: -item.responses[i].pass_rate)   # stable: sample order breaks ties
            scores = await self._score_until_enough(ctx, item, passed)
        else:
            scores = await asyncio.gather(*(self._score_of(ctx, item.task, item.responses[i]) for i in passed))
        responses = list(item.responses)
        dropped: Counter[str] = Counter()
        kept = 0
        for i, score in zip(passed, scores):
            if score is NOT_NEEDED:
                responses[i] = responses[i].with_score(UNSCORED)
                dropped["not_needed"] += 1
                continue
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
        return [replace(item, responses=tuple(responses))]

    async def _score_until_enough(self, ctx: Context, item: QueryResult, order: list[int]) -> list:
        scores: list = []
        kept = 0
        for i in order:
            if kept >= self.until:
                scores.append(NOT_NEEDED)
                continue
            score = await self._score_of(ctx, item.task, item.responses[i])
            scores.append(score)
            kept += score is not None and score >= self.score_min
        return scores

    async def _score_of(self, ctx: Context, task: QueryTask, response: ResponseRecord) -> int | None:
        if response.score is not None:      # scored already (a file `autoif stage score` reads)
            return response.score
        return await self.score(ctx, task, response)

    async def score(self, ctx: Context, task: QueryTask, response: ResponseRecord) -> int | None:
        """The judge's 1-10 score of one response, None when unreadable."""
        prompt = render("score", instruction=task.instruction_text, query=task.query,
                        response=response.text)
        answers = await ask(ctx, prompt, self.sampling, role=JUDGE)
        return parse_score(answers[0].text) if answers else None
