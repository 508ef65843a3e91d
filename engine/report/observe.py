"""What the engine records while it runs for the report's histograms, in bounded memory.

Pass rates and scores of *every* response, not only of the ones that reach the exports: a
query whose K responses all fail, or whose passing responses all score below the bar, is
dropped by its stage, and a histogram of the survivors alone would hide exactly the part of
the distribution that tells how to set `pass_threshold` and `score_min`.

Two thin wrappers see those numbers without changing the stages:
- ResponseStage: its sandbox calls go through an executor proxy that computes each response's
  pass rate from the outcomes exactly as the stage does (share of functions that returned True);
- ScoreStage: a subclass whose `score()` records what the judge said (0: unreadable).
Counts are fixed bins, so memory does not grow with the run.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

from engine.records import FunctionResult
from engine.stage import Context
from engine.stages.base import outcome_bool
from sandbox_pool import Outcome

PASS_RATE_BINS = 10                      # [0, .1), [.1, .2), ... [.9, 1.0]
SCORE_VALUES = tuple(range(0, 11))       # 0: the judge gave no readable score; 1..10


class Distributions:
    """Fixed-bin counts of response pass rates and judge scores; thread-safe, mergeable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pass_rate = [0] * PASS_RATE_BINS
        self.score = [0] * len(SCORE_VALUES)

    def add_pass_rate(self, rate: float) -> None:
        i = min(PASS_RATE_BINS - 1, max(0, int(rate * PASS_RATE_BINS + 1e-9)))
        with self._lock:
            self.pass_rate[i] += 1

    def add_score(self, score: int | None) -> None:
        value = 0 if score is None else int(score)
        if value not in SCORE_VALUES:
            return
        with self._lock:
            self.score[value] += 1

    def to_dict(self) -> dict:
        with self._lock:
            return {"pass_rate": {"edges": [round(i / PASS_RATE_BINS, 2) for i in range(PASS_RATE_BINS + 1)],
                                  "counts": list(self.pass_rate)},
                    "score": {"values": list(SCORE_VALUES), "counts": list(self.score)}}

    @staticmethod
    def merge(parts: Sequence[dict]) -> dict:
        """Bin-wise sum of several to_dict() results (shards)."""
        out = Distributions().to_dict()
        for part in parts:
            if not part:
                continue
            for key in ("pass_rate", "score"):
                counts = part.get(key, {}).get("counts", [])
                for i, n in enumerate(counts[:len(out[key]["counts"])]):
                    out[key]["counts"][i] += n
        return out


def pass_rates(results: Sequence[Sequence[Outcome]]) -> list[float]:
    """Per response j, the share of functions i whose outcome results[i][j] is exactly True
    (engine.stages.responses.grade's rule, through the same FunctionResult.passed)."""
    if not results:
        return []
    n = min(len(r) for r in results)
    return [sum(FunctionResult("", r[j].status, outcome_bool(r[j])).passed
                for r in results) / len(results) for j in range(n)]


class _PassRateExecutor:
    """The pool, as ResponseStage sees it: records the pass rate of every batch it grades."""

    def __init__(self, inner: Any, dists: Distributions) -> None:
        self.inner, self.dists = inner, dists

    async def evaluate_many(self, jobs):
        results = await self.inner.evaluate_many(jobs)
        try:
            rates = pass_rates(results)
        except Exception:               # observing must never change what the stage sees
            rates = []
        for rate in rates:
            self.dists.add_pass_rate(rate)
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ObservedResponses:
    """Wraps a ResponseStage; its outputs and funnel counts are the stage's own."""

    def __init__(self, stage: Any, dists: Distributions) -> None:
        self.inner, self.dists, self.name = stage, dists, stage.name

    async def process(self, item: Any, ctx: Context) -> list:
        view = dataclasses.replace(ctx, executor=_PassRateExecutor(ctx.executor, self.dists))
        return await self.inner.process(item, view)


class ObservedScores:
    """Wraps a ScoreStage: every score the judge gives is recorded, kept or not."""

    def __init__(self, stage: Any, dists: Distributions) -> None:
        self.inner, self.dists, self.name = stage, dists, stage.name
        inner_score = stage.score

        async def score(*args, **kwargs):
            value = await inner_score(*args, **kwargs)
            self.dists.add_score(value)
            return value

        stage.score = score            # the instance attribute shadows the method for this stage only

    async def process(self, item: Any, ctx: Context) -> list:
        return await self.inner.process(item, ctx)


def observe_stages(stages: list, dists: Distributions) -> list:
    """The chain with its response and score stages observed (matched by stage name, so
    wrappers such as run.Recorded around them are left as they are)."""
    out = []
    for s in stages:
        target = getattr(s, "inner", s)
        if getattr(target, "name", None) == "responses" and hasattr(target, "process"):
            s = ObservedResponses(s, dists)
        elif getattr(target, "name", None) == "scoring" and hasattr(target, "score"):
            wrapped = ObservedScores(target, dists)
            s = s if s is not target else wrapped
        out.append(s)
    return out
