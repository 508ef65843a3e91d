"""StreamRunner: streams items through a chain of stages with two-way backpressure.

Each stage gets a bounded input queue and a fixed number of worker tasks. A worker takes
one item, awaits the stage (which awaits the LLM client and/or the sandbox pool), and puts
every output on the next queue at once: no barrier between stages, so the K samples of one
query are being verified while other queries are still generating.

Backpressure both ways, never an unbounded queue:
- a slow pool keeps workers of the verifying stage waiting -> its queue fills -> the
  generating stage's puts block -> no new requests go to the server;
- a slow server keeps generating workers waiting -> the pool simply idles.
The client's own in-flight limit caps server load independently of stage concurrency.

Shutdown is ordered: `stop()` starts no new work: the source is read no further, and an item
waiting in a queue between stages stays unstarted (a rerun starts it), while what is in flight
finishes and reaches the sink; `stop(abort=True)` (a second Ctrl-C) cancels in-flight work.
Either way the sink sees every finished item exactly once, and the summary is still produced.

A stage may need its whole input before it decides (a cap granted by a rule over every item,
not by arrival): its optional `hold(item)` returns a sort key for an item that must wait, None
for one it can take at once. Held items are processed once the stage's input has ended, in key
order, and only when that input is whole: the source was read to its end and no item upstream
was lost to an error. Otherwise they stay unstarted, and a rerun (with what is stored) decides.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, Callable, Iterable, Sequence

from engine.metrics import RunMetrics
from engine.outcome import error_reason, is_storage_failure
from engine.stage import Context, Funnel, Stage, Stopped

log = logging.getLogger("autoif.runner")

_DONE = object()  # end-of-stream marker, one per downstream worker


@dataclass
class StageSpec:
    """A stage plus how many items it may work on at once."""

    stage: Stage
    concurrency: int = 16


@dataclass
class RunSummary:
    wall_s: float
    source_items: int
    sink_items: int
    stopped: str                    # "completed" | "drained" | "aborted" | "failed"
    funnel: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"wall_s": round(self.wall_s, 3), "source_items": self.source_items,
                "sink_items": self.sink_items, "stopped": self.stopped,
                "funnel": self.funnel, "stages": self.stages}


Sink = Callable[[Any], Any]  # sync or async; receives each output of the last stage


class StageObserver:
    """Everything counted about items moving through the stages, from two runner events per
    item (started, ended): the funnel, the Prometheus counters and latencies, and the per-stage
    arrays the progress line reads (in flight, finished, busy seconds)."""

    def __init__(self, names: Sequence[str], funnel: Funnel, metrics: RunMetrics) -> None:
        self.names, self.funnel, self.metrics = list(names), funnel, metrics
        self.in_flight = [0] * len(names)
        self.finished = [0] * len(names)     # items each stage has finished (for the ETA)
        self.busy_s = [0.0] * len(names)     # summed time items spent in each stage

    def started(self, i: int) -> None:
        self.funnel.count_in(self.names[i])
        self.metrics.items.labels(self.names[i], "in").inc()
        self.in_flight[i] += 1

    def ended(self, i: int, elapsed: float, outputs: int | None, error: str | None = None) -> None:
        """`outputs`: how many the stage made (None: cancelled, so neither kept nor dropped);
        `error`: the funnel reason of an item whose stage raised."""
        name, items = self.names[i], self.metrics.items
        self.in_flight[i] -= 1
        self.finished[i] += 1
        self.busy_s[i] += elapsed
        self.metrics.latency.labels(name).observe(elapsed)
        if outputs is None:
            return
        if error is not None:
            self.funnel.drop(name, error)
            items.labels(name, "error").inc()
        if outputs:
            self.funnel.count_kept(name)
            self.funnel.count_out(name, outputs)
            items.labels(name, "kept").inc()
            items.labels(name, "out").inc(outputs)
        else:
            items.labels(name, "dropped").inc()


class StreamRunner:
    def __init__(self, stages: Sequence[Stage | StageSpec], ctx: Context, *,
                 queue_size: int = 64, sink: Sink | None = None,
                 metrics: RunMetrics | None = None) -> None:
        if not stages:
            raise ValueError("StreamRunner needs at least one stage")
        self.specs = [s if isinstance(s, StageSpec) else StageSpec(s) for s in stages]
        self.ctx = ctx
        self.queue_size = queue_size
        self.sink = sink
        self.metrics = metrics or RunMetrics()
        self.queues: list[asyncio.Queue] = []
        self.source_items = 0
        self.sink_items = 0
        self.source_total: int | None = None
        self.observer = StageObserver([s.stage.name for s in self.specs], ctx.funnel, self.metrics)
        # the progress line reads these per-stage counts
        self.in_flight, self.finished, self.busy_s = (self.observer.in_flight, self.observer.finished,
                                                      self.observer.busy_s)
        self._stopping = False
        self._aborted = False
        self._tasks: list[asyncio.Task] = []
        self._drain: asyncio.Task | None = None
        self._signals: list[int] = []
        self._errors_logged = 0
        self._lost = [0] * len(self.specs)         # items each stage lost to an error
        self._held: list[list[tuple[Any, Any]]] = [[] for _ in self.specs]
        self.failure: BaseException | None = None   # what ended the run early (disk full, ...)

    # -- control -------------------------------------------------------------------
    def stop(self, abort: bool = False) -> None:
        """Stop taking source items; with abort, also cancel what is in flight."""
        self._stopping = True
        self.ctx.stopping = True
        if abort and not self._aborted:
            self._aborted = True
            for t in self._tasks:
                if t is not self._drain:   # what already finished still reaches the sink
                    t.cancel()

    def install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM drains, the second aborts."""
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if self._stopping:
                log.warning("second interrupt: aborting in-flight work")
                self.stop(abort=True)
            else:
                log.warning("interrupt: no new work; draining in-flight items (Ctrl-C again to abort)")
                self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
                self._signals.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass

    def _remove_signal_handlers(self) -> None:
        """After the run, Ctrl-C must reach whatever comes next (exports, the next round)."""
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    def queue_depths(self) -> dict[str, int]:
        return {spec.stage.name: q.qsize() for spec, q in zip(self.specs, self.queues)}

    # -- running -------------------------------------------------------------------
    async def run(self, source: Iterable | AsyncIterable, total: int | None = None) -> RunSummary:
        t0 = time.perf_counter()
        self.source_total = total if total is not None else _len_or_none(source)
        self.queues = [asyncio.Queue(self.queue_size) for _ in range(len(self.specs) + 1)]
        for spec in self.specs:   # optional hook: work every item will need, sent first
            start = getattr(spec.stage, "start", None)
            if callable(start):
                start(self.ctx)
        stage_groups: list[list[asyncio.Task]] = []
        for i, spec in enumerate(self.specs):
            stage_groups.append([asyncio.create_task(self._worker(i), name=f"{spec.stage.name}-{w}")
                                 for w in range(spec.concurrency)])
        feeder = asyncio.create_task(self._feed(source), name="feeder")
        closers = [asyncio.create_task(self._close_after(i, group), name=f"close-{i}")
                   for i, group in enumerate(stage_groups)]
        drain = self._drain = asyncio.create_task(self._drain_sink(), name="sink")
        self._tasks = [feeder, drain, *closers, *(t for g in stage_groups for t in g)]
        try:
            await asyncio.gather(feeder, *closers, drain, return_exceptions=False)
        except asyncio.CancelledError:
            if not self._aborted:
                raise
        finally:
            if self._aborted and not drain.done():
                await self.queues[-1].put(_DONE)   # deliver what the last stage finished
                await asyncio.gather(drain, return_exceptions=True)
            for t in self._tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._remove_signal_handlers()
        stopped = ("failed" if self.failure is not None else "aborted" if self._aborted
                   else "drained" if self._stopping else "completed")
        return RunSummary(wall_s=time.perf_counter() - t0, source_items=self.source_items,
                          sink_items=self.sink_items, stopped=stopped,
                          funnel=self.ctx.funnel.to_dict(), stages=self.metrics.summary())

    async def _feed(self, source: Iterable | AsyncIterable) -> None:
        q = self.queues[0]
        try:
            if hasattr(source, "__aiter__"):
                async for item in source:  # type: ignore[union-attr]
                    if self._stopping:
                        break
                    await q.put(item)
                    self.source_items += 1
            else:
                for item in source:  # type: ignore[union-attr]
                    if self._stopping:
                        break
                    await q.put(item)
                    self.source_items += 1
        finally:
            for _ in range(self.specs[0].concurrency):
                await q.put(_DONE)

    async def _close_after(self, i: int, group: list[asyncio.Task]) -> None:
        await asyncio.gather(*group, return_exceptions=True)
        held, self._held[i] = self._held[i], []
        if held:
            if self._input_whole(i):
                for _, item in sorted(held, key=lambda kv: kv[0]):
                    await self._process(i, item)
            else:
                log.info("stage %s: %d items wait for its whole input, which did not come; "
                         "a rerun takes them", self.specs[i].stage.name, len(held))
        nxt = self.queues[i + 1]
        n_next = self.specs[i + 1].concurrency if i + 1 < len(self.specs) else 1
        for _ in range(n_next):
            await nxt.put(_DONE)

    def _input_whole(self, i: int) -> bool:
        """Stage i's input ended with every item it should have had: nothing stopped the run and
        no stage before it lost an item to an error."""
        return not self._stopping and not any(self._lost[:i])

    async def _worker(self, i: int) -> None:
        hold = getattr(self.specs[i].stage, "hold", None)
        q_in = self.queues[i]
        while True:
            item = await q_in.get()
            if item is _DONE:
                return
            if self._stopping:     # not started: it stays so (the queue is still emptied, so
                continue           # that upstream items in flight can finish)
            key = hold(item) if hold is not None else None
            if key is not None:
                self._held[i].append((key, item))
                continue
            await self._process(i, item)

    async def _process(self, i: int, item: Any) -> None:
        """One item through stage i, its outputs on the next queue."""
        spec = self.specs[i]
        q_out = self.queues[i + 1]
        observer = self.observer
        observer.started(i)
        t = time.perf_counter()
        error = None
        try:
            outs = await spec.stage.process(item, self.ctx)
        except asyncio.CancelledError:
            observer.ended(i, time.perf_counter() - t, None)
            raise
        except Stopped:          # its next request was refused: left for a rerun, not counted
            observer.ended(i, time.perf_counter() - t, None)
            return
        except Exception as exc:  # one bad item never stops the run; it is a counted drop
            if is_storage_failure(exc):
                self._fail(exc)       # the run's failure, not this item's: every later item would fail
            else:
                self._log_error(spec.stage.name, exc)
            error = error_reason(exc)
            self._lost[i] += 1
            outs = []
        observer.ended(i, time.perf_counter() - t, len(outs), error)
        for out in outs:
            await q_out.put(out)

    async def _drain_sink(self) -> None:
        q = self.queues[-1]
        while True:
            item = await q.get()
            if item is _DONE:
                return
            if self.sink is not None:
                try:
                    r = self.sink(item)
                    if inspect.isawaitable(r):
                        await r
                except Exception as exc:
                    if not is_storage_failure(exc):
                        raise
                    self._fail(exc)
                    return
            self.sink_items += 1

    def _fail(self, exc: BaseException) -> None:
        """Storage cannot take more (disk full, read-only): stop at once, keep what is stored."""
        if self.failure is None:
            self.failure = exc
            # the caller says it once, in its own words (`autoif run`: "cannot write to ...")
            log.debug("stopping: %s", exc)
            self.stop(abort=True)

    def _log_error(self, stage: str, exc: BaseException) -> None:
        self._errors_logged += 1
        if self._errors_logged <= 5:
            log.warning("stage %s: %s: %s\n%s", stage, type(exc).__name__, exc,
                        "".join(traceback.format_exception(exc)[-3:]).rstrip())
        elif self._errors_logged == 6:
            log.warning("further stage errors are counted in the funnel, not logged")


def _len_or_none(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None
