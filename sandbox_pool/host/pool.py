"""SandboxPool: the asyncio-facing pool that runs verifier jobs on pre-started sandbox workers.

It composes the Scheduler (which queued jobs go out next, merged how), the Workers (their
processes, replacement and watchdog) and each worker's Connection (framed non-blocking
I/O). Per job the main process does one precheck lookup (cached), one send and one receive.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Iterable, Sequence

import orjson

from ..config import PoolConfig
from ..outcome import OK_FALSE, OK_NONE, OK_TRUE, REJECTED, STATUSES, JobResult, Outcome, one_line
from .precheck import precheck
from .protocol import Malformed, decode_result, dumps, max_frame
from .scheduler import Scheduler
from .workers import LAYERS, Worker, Workers

log = logging.getLogger("sandbox_pool")


class SandboxPool:
    """A pool of pre-started sandbox workers that run untrusted `evaluate(response)` code."""

    def __init__(self, config: PoolConfig | None = None):
        config = config if config is not None else PoolConfig()
        self.config = config
        self.n_workers = config.n_workers
        self.limits = config.limits
        self.allowed_modules = frozenset(self.limits.allowed_modules)
        self._depth = max(1, int(config.pipeline_depth))
        self._sched = Scheduler(config.coalesce_max_inputs, config.coalesce_window_s)
        self._workers = Workers(config, self._on_readable, self._on_write_error)
        self._window_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closing = False
        self._ready_waiter: asyncio.Future | None = None
        self._fatal: str | None = None
        self._counts = dict.fromkeys(STATUSES, 0)
        self._jobs = self._checks = self._dispatched = 0
        self._busy_s = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> "SandboxPool":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._ready_waiter = self._loop.create_future()
        self._started = True
        try:
            self._workers.start(self._loop)
            await asyncio.wait_for(asyncio.shield(self._ready_waiter), self.config.start_timeout_s)
        except asyncio.TimeoutError:
            await self.close()
            raise RuntimeError(f"workers did not start within {self.config.start_timeout_s:g} s "
                               "(an overloaded machine, or raise start_timeout_s)") from None
        except BaseException:
            await self.close()
            raise
        self._workers.report_isolation()
        # Every job resolves within timeout_s + grace_s of reaching its worker, whatever happens.
        self._workers.watch(self._worker_died)

    async def close(self) -> None:
        if self._closing or not self._started:
            return
        self._closing = True
        if self._window_timer:
            self._window_timer.cancel()
        err = RuntimeError("SandboxPool closed")
        jobs = self._sched.drain()
        for w in self._workers.all:
            for wire in w.inflight:
                jobs.extend(wire.parts)
            w.inflight.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)
        await self._workers.close()
        if self._ready_waiter and not self._ready_waiter.done():
            self._ready_waiter.cancel()

    # ---- public API --------------------------------------------------------------------------

    async def evaluate(self, code: str, inputs: Sequence, *, urgent: bool = False,
                       more_coming: bool = False) -> JobResult:
        """Run `code`'s evaluate() on each input in one sandboxed job; one Outcome per input."""
        fut = self._enqueue([self._prepare(code, inputs)], urgent, more_coming)[0]
        self._dispatch()
        return await fut

    async def evaluate_many(self, jobs: Iterable[tuple[str, Sequence]], *, urgent: bool = False,
                            more_coming: bool = False) -> list[JobResult]:
        """Run many (code, inputs) jobs spread over all workers; results in job order.

        `urgent` jobs are dispatched before every queued job that is not. `more_coming`: the
        caller expects more jobs of the same codes soon; with a coalescing window (not urgent
        jobs only) they wait up to coalesce_window_s for them, to share one fork."""
        encoded: dict = {}  # the engine often sends one inputs list with many verifiers
        prepared = [self._prepare(code, inputs, encoded) for code, inputs in jobs]  # may raise: nothing queued
        futs = self._enqueue(prepared, urgent, more_coming)
        self._dispatch()
        return list(await asyncio.gather(*futs))

    def stats(self) -> dict:
        isolation = dict(self._workers.isolation)
        live = [w for w in self._workers.all if not w.dead]
        return {
            "jobs": self._jobs,
            "checks": self._checks,
            **self._counts,
            "dispatched": self._dispatched,
            "busy_s": self._busy_s,
            "workers": self.n_workers,
            "restarts": self._workers.restarts,
            "pids": [w.proc.pid for w in live],
            "uids": [w.uid for w in live],
            "isolation": isolation,
            "degraded": [k for k in LAYERS if not isolation.get(k, False)],
        }

    @property
    def _next_id(self) -> int:
        """The id of the latest wire sent."""
        return self._sched.last_id

    @property
    def _scratch_root(self) -> str | None:
        return self._workers.scratch_root

    # ---- submission and dispatch -----------------------------------------------------------

    def _prepare(self, code: str, inputs: Sequence, encoded: dict | None = None):
        """Precheck and encode one job: a JobResult when it needs no worker, else
        (code, code as JSON, inputs as JSON, n)."""
        if not self._started or self._closing:
            raise RuntimeError("SandboxPool is not running: use 'async with SandboxPool(...)'")
        if self._fatal:
            raise RuntimeError(f"SandboxPool is broken: {self._fatal}")
        if type(inputs) is not list and type(inputs) is not tuple:
            inputs = list(inputs)  # any iterable; only real lists/tuples are worth caching by id
        hit = encoded.get(id(inputs)) if encoded is not None else None
        if hit is not None and hit[0] is inputs:
            n, data = hit[1], hit[2]
        else:
            data = None
            n = len(inputs)
        reason = precheck(code, self.allowed_modules)
        if reason is not None:
            return JobResult([Outcome(REJECTED, None, reason)] * n)
        if n == 0:
            return JobResult()
        if data is None:
            data = dumps(inputs)
            if encoded is not None:
                encoded[id(inputs)] = (inputs, n, data)  # holding `inputs` keeps its id unique
        return code, dumps(code), data, n

    def _enqueue(self, prepared: list, urgent: bool, more_coming: bool = False) -> list[asyncio.Future]:
        futs = []
        for item in prepared:
            fut = self._loop.create_future()
            self._jobs += 1
            if type(item) is JobResult:
                self._checks += len(item)
                self._counts[REJECTED] += len(item) if item and item[0].status == REJECTED else 0
                fut.set_result(item)
            else:
                self._sched.submit(*item, fut, urgent=urgent, more_coming=more_coming)
            futs.append(fut)
        return futs

    def _window_over(self) -> None:
        self._window_timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        sched = self._sched
        while sched.pending():
            due = sched.hold_until()
            if due is not None:
                if self._window_timer is None:
                    self._window_timer = self._loop.call_later(due - time.monotonic(), self._window_over)
                return
            best, free = self._workers.pick(self._depth)
            if best is None:
                return
            wire = sched.take(free)
            if not best.inflight:
                wire.started = time.monotonic()
            best.inflight.append(wire)
            self._dispatched += 1
            try:
                best.conn.send(wire.payload())
            except OSError as e:
                # Nothing of this wire reached the worker (it died before we noticed): its jobs
                # never ran, so they go back to the queue instead of failing with the worker.
                sched.requeue(best.inflight.pop())
                self._worker_died(best, f"connection lost ({e.strerror})")
                return

    # ---- receiving ---------------------------------------------------------------------------

    def _on_readable(self, w: Worker) -> None:
        # Nothing a worker sends may raise out of this callback: a malformed, oversized or
        # unexpected frame (or a bug here) fails that worker's job and replaces the worker.
        try:
            self._receive(w)
        except Exception as e:
            self._worker_died(w, one_line(f"malformed answer from the sandbox worker: {type(e).__name__}: {e}"))
            self._dispatch()

    def _receive(self, w: Worker) -> None:
        try:
            more = w.conn.read()
        except OSError as e:
            # ECONNRESET: the worker died with bytes of ours unread, so the last wire never ran.
            self._connection_lost(w, e, unread=e.errno == errno.ECONNRESET)
            return
        if not more:
            self._worker_died(w, w.exit_reason())
            return

        def handle(frame) -> bool:
            self._on_message(w, orjson.loads(frame))
            return not w.dead

        w.conn.handle_frames(handle)
        if w.dead:
            return
        pending = w.conn.pending_size()
        if pending is not None and pending > max_frame(self.limits, max((j.n for j in w.inflight), default=0)):
            raise Malformed(f"frame of {pending} bytes announced")
        self._dispatch()

    def _on_message(self, w: Worker, msg) -> None:
        if type(msg) is list:
            self._on_result(w, msg)
        elif type(msg) is not dict:
            raise Malformed(f"unexpected {type(msg).__name__}")
        elif "hello" in msg:
            if self._workers.hello(w, msg) and self._ready_waiter and not self._ready_waiter.done():
                self._ready_waiter.set_result(None)
        elif "fatal" in msg:
            log.error("sandbox_pool: worker %d failed: %s", w.index, msg["fatal"])
            self._worker_died(w, "worker failed: " + str(msg["fatal"]).strip().splitlines()[-1])
        else:
            raise Malformed("unexpected message")

    def _on_result(self, w: Worker, msg: list) -> None:
        if not w.inflight:
            raise Malformed("an answer with no job in flight")
        wire = w.inflight[0]
        outcomes, recs, output, elapsed, busy = decode_result(msg, wire)  # Malformed: head crashes
        w.inflight.popleft()
        if w.inflight:
            w.inflight[0].started = time.monotonic()
        self._busy_s += busy
        if recs:  # coalescing must not cost an innocent caller its verdicts
            kept = self._sched.rerun_bystanders(wire, outcomes, msg[1])
            if len(kept) != len(outcomes):
                outcomes = kept
                recs = [o for o in outcomes if o not in (OK_TRUE, OK_FALSE, OK_NONE)]
        self._checks += len(outcomes)
        self._counts["ok"] += len(outcomes) - len(recs)
        for o in recs:
            self._counts[o.status] += 1
        wire.resolve(outcomes, output, elapsed)

    # ---- failures ----------------------------------------------------------------------------

    def _on_write_error(self, w: Worker, e: OSError) -> None:
        self._connection_lost(w, e, unread=True)  # the last wire was not all written

    def _connection_lost(self, w: Worker, e: OSError, *, unread: bool) -> None:
        # The supervisor reads one whole wire before it runs it. A lone in-flight wire that the
        # worker never finished reading never ran: it goes back to the queue rather than failing
        # 'crashed' (a job sent to a worker killed a moment before). With more wires in flight
        # the head may have been running, so it fails as the worker's job.
        if unread and len(w.inflight) == 1:
            self._sched.requeue(w.inflight.pop())
        self._worker_died(w, f"connection lost ({e.strerror})")

    def _worker_died(self, w: Worker, reason: str) -> None:
        if w.dead:
            return
        inflight = self._workers.lose(w)
        if inflight:  # the job it was running is lost; the ones queued behind it are not
            head = inflight[0]
            self._checks += head.n
            self._counts["crashed"] += head.n
            head.fail(reason)
            for wire in reversed(inflight[1:]):
                self._sched.requeue(wire)
        if self._closing:
            return
        broken = self._workers.replace(w, reason)
        if broken:
            self._break(broken)
            return
        self._dispatch()

    def _break(self, reason: str) -> None:
        self._fatal = reason
        log.error("sandbox_pool: %s", reason)
        err = RuntimeError(f"SandboxPool is broken: {reason}")
        if self._ready_waiter and not self._ready_waiter.done():
            self._ready_waiter.set_exception(err)
        for job in self._sched.drain():
            if not job.future.done():
                job.future.set_exception(err)
