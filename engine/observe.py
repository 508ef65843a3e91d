"""What the engine records while it runs for the report's histograms, in bounded memory.

Pass rates and scores of *every* response, not only of the ones that reach the exports: a
query whose K responses all fail, or whose passing responses all score below the bar, is
dropped by its stage, and a histogram of the survivors alone would hide exactly the part of
the distribution that tells how to set `pass_threshold` and `score_min`.

Two thin wrappers see those numbers without changing the stages:
- ResponseStage: the pass rates of the results it gives its `on_graded` hook for every graded task;
- ScoreStage: a subclass whose `score()` records what the judge said (0: unreadable).
Counts are fixed bins, so memory does not grow with the run.
"""
from __future__ import annotations

import bisect
import threading
from typing import Any, Sequence

from engine.stage import Context

# Pass-rate buckets by upper bound, inclusive (Prometheus's `le`): 0 exactly, then (0, .1],
# (.1, .2], ... (.9, 1]. Upper-inclusive bins line up with the rule "kept when MORE than the
# threshold": at 0.5 the bin (.4, .5] is all dropped and (.5, .6] all kept.
PASS_RATE_LE = tuple(round(i / 10, 1) for i in range(11))
SCORE_VALUES = tuple(range(0, 11))       # 0: the judge gave no readable score; 1..10


class Distributions:
    """Bucket counts (and sums) of response pass rates and judge scores; thread-safe, mergeable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pass_rate = [0] * len(PASS_RATE_LE)
        self.score = [0] * len(SCORE_VALUES)
        self.pass_rate_sum = 0.0
        self.score_sum = 0

    def add_pass_rate(self, rate: float) -> None:
        i = bisect.bisect_left(PASS_RATE_LE, min(1.0, max(0.0, rate)) - 1e-9)
        with self._lock:
            self.pass_rate[min(i, len(PASS_RATE_LE) - 1)] += 1
            self.pass_rate_sum += rate

    def add_score(self, score: int | None) -> None:
        value = 0 if score is None else int(score)
        if value not in SCORE_VALUES:
            return
        with self._lock:
            self.score[value] += 1
            self.score_sum += value

    def to_dict(self) -> dict:
        with self._lock:
            return {"pass_rate": {"le": list(PASS_RATE_LE), "counts": list(self.pass_rate),
                                  "sum": round(self.pass_rate_sum, 6)},
                    "score": {"values": list(SCORE_VALUES), "counts": list(self.score),
                              "sum": self.score_sum}}

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
                out[key]["sum"] += part.get(key, {}).get("sum", 0)
        return out


class ObservedResponses:
    """Wraps a ResponseStage; its outputs and funnel counts are the stage's own. The pass rates
    come through the stage's `on_graded` hook (chained: whoever else listens still hears),
    which gets the K samples of every graded task, kept or not, and nothing else that rode
    in the same sandbox batch (the plain replies of plain_rejects)."""

    def __init__(self, stage: Any, dists: Distributions) -> None:
        self.inner, self.dists, self.name = stage, dists, stage.name
        target = getattr(stage, "inner", stage)
        listener = target.on_graded

        def on_graded(result: Any) -> None:
            for response in result.responses:
                dists.add_pass_rate(response.pass_rate)
            if listener is not None:
                listener(result)

        target.on_graded = on_graded

    async def process(self, item: Any, ctx: Context) -> list:
        return await self.inner.process(item, ctx)


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
    wrappers such as engine.run.Recorded around them are left as they are)."""
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
