"""run_shard: the stages of a RunSpec streamed over a source, observed and recorded.

Every way a job runs comes here: `autoif run` (the whole chain), a Ray shard's two phases
(augment; the rest of the chain over its instructions), `autoif stage` (one stage over a
file), each online-DPO round, and the benchmarks. What differs between them is handed in:
the engine (client, pool, context), where records go (a Recorder) and where results go.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterable, Callable, Iterable

from engine.errors import JobError
from engine.metrics import LiveCollector, RunMetrics, TimeSeries
from engine.progress import Progress
from engine.observe import Distributions, observe_stages
from engine.run.engine import Engine
from engine.run.record import Recorded, Recorder
from engine.run.spec import RunSpec
from engine.runner import StageSpec, StreamRunner
from engine.records import VerifiedInstruction
from engine.stages import COMPOSE, QueryBudget, default_stages

Sink = Callable[[Any], Any]


def build_stages(spec: RunSpec, recorder: Recorder | None) -> list:
    """The spec's stages, their outputs recorded where the recorder says; an input file they
    read that is missing or bad ends the job in one line."""
    cfg = spec.config
    try:
        stages = default_stages(cfg, spec.seeds, spec.queries, names=spec.stages,
                                on_graded=recorder.graded if recorder else None,
                                query_budget=(recorder.query_budget(cfg) if recorder
                                              else QueryBudget(cfg.responses.max_queries)),
                                on_conflict=recorder.conflict if recorder else None,
                                compose_groups=recorder.compose_groups() if recorder else None)
    except (OSError, ValueError) as exc:
        raise JobError(f"stages: {exc}") from None
    if recorder is None:
        return stages
    put = {"augment": recorder.augmented, "audit": recorder.verified}
    if any(s.name == COMPOSE for s in stages):
        # the verified instructions as composition leaves them, with their families (stored by
        # id, the first put of an id is the one kept); not the composed prompts it adds
        put["compose"] = lambda outs: recorder.verified([o for o in outs if isinstance(o, VerifiedInstruction)])
        del put["audit"]
    return [Recorded(s, put[s.name]) if s.name in put else s for s in stages]


# Stages whose outputs their own wrapper records (build_stages): augment's instructions and the
# audit's (or composition's) verified ones, the records a rerun resumes from. Any other last
# stage's outputs are the run's final results.
_SELF_RECORDED = ("augment", "audit", COMPOSE)


async def run_shard(spec: RunSpec, engine: Engine, source: Iterable | AsyncIterable, *,
                    recorder: Recorder | None = None, sink: Sink | None = None,
                    metrics: RunMetrics | None = None, series: TimeSeries | None = None) -> dict:
    """Runs the spec's stages over `source` and returns the run's summary: funnel, stage
    timings, client and pool counters, time series and distributions, and how it stopped.

    Each final result goes to the recorder, then to `sink`. `metrics`: the job's (served or not),
    else this run's own; `series`: a time series the caller also reads (a Ray shard's ticks).
    """
    cfg = spec.config
    metrics = metrics or RunMetrics()
    series = series if series is not None else TimeSeries(interval_s=1.0)
    dists = Distributions()                 # pass rates and scores of every response, for reports
    stages = observe_stages(build_stages(spec, recorder), dists)

    record = recorder is not None and spec.stages[-1] not in _SELF_RECORDED

    def final(result: Any) -> Any:
        if record:
            recorder.result(result)
        return sink(result) if sink is not None else None

    runner = StreamRunner([StageSpec(s, cfg.run.stage_concurrency) for s in stages], engine.ctx,
                          queue_size=max(8, cfg.run.stage_concurrency), sink=final, metrics=metrics)
    runner.install_signal_handlers()
    metrics.attach(LiveCollector(stats=lambda: {**engine.client_stats(), **engine.counters()},
                                 point=lambda: series.points[-1] if series.points else {},
                                 queues=runner.queue_depths, funnel=engine.ctx.funnel.to_dict,
                                 distributions=dists.to_dict))
    # the time series is sampled whether or not the progress line is shown
    reporter = Progress(runner, engine.counters, series=series,
                        pool_workers=getattr(engine.pool, "n_workers", 1) or 1,
                        stream=None if spec.progress else _Discard())
    ticker = asyncio.create_task(reporter.run())
    try:
        summary = await runner.run(source)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    out = summary.to_dict()
    out["client"] = engine.client_stats()
    out["pool"] = engine.pool_stats()
    out["timeseries"] = series.to_list()
    out["distributions"] = dists.to_dict()
    if runner.failure is not None:
        out["failure"] = str(runner.failure)
    return out


class _Discard:
    """A stream that drops what is written (the progress line when it is not shown)."""

    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass
