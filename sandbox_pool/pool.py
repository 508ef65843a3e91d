"""The asyncio-facing pool: dispatches jobs to pre-started sandbox workers.

The event loop never blocks on a worker: each worker's socket is non-blocking and
registered with loop.add_reader/add_writer, and frames are assembled here in the
same format multiprocess' Connection uses on the worker side. Per job the main
process does one precheck lookup (cached), one send and one receive.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import socket
import tempfile
import time
import weakref
from collections import deque
from typing import Iterable, Sequence

import orjson

from .cgroups import JobCgroups
from .config import PoolConfig
from .limits import WorkerSpec
from .channel import header, next_frame_size, split_frames
from .outcome import (CODE_TO_STATUS, C_OK, OK_FALSE, OK_NONE, OK_TRUE, REJECTED, STATUSES, JobResult,
                      Outcome)
from .precheck import precheck
from .runner import one_line
from .scheduler import Scheduler, Wire
from .scratch import remove_tree

log = logging.getLogger("sandbox_pool")

LAYERS = ("pid_namespace", "net_namespace", "landlock_fs", "landlock_net", "landlock_scope",
          "setuid", "fork_limit", "env_scrub", "scratch_quota", "job_cgroup", "ipc_namespace")
_CONSEQUENCE = {
    "job_cgroup": "memory is limited per process (RLIMIT_AS), not per job: a job's children, memfds "
                  "and shared memory are not counted together",
    "ipc_namespace": "jobs share the host's SysV IPC objects (shared memory, message queues), "
                     "which outlive the job",
    "pid_namespace": "leftover job processes are killed by process group/uid sweep instead of "
                     "namespace teardown",
    "net_namespace": "jobs share the host network stack",
    "landlock_fs": "jobs may read and write wherever their uid may",
    "landlock_net": "TCP is not blocked by Landlock",
    "landlock_scope": "jobs may signal processes / use abstract sockets of their uid",
    "setuid": "jobs run with the pool's own uid (as root if the pool is root)",
    "fork_limit": "no RLIMIT_NPROC fork-bomb bound (only the wall-clock limit)",
    "env_scrub": "jobs can read the pool's environment variables",
    "scratch_quota": "scratch files are bounded per file (max_file_mb) and by the clock, not in total",
}
_TAG_OUTCOME = {"T": OK_TRUE, "F": OK_FALSE, "N": OK_NONE}
_SCALARS = (type(None), bool, int, float, str)
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# A result frame carries at most max_value_chars (JSON-escaped) and a one-line detail per input,
# plus the captured output; anything declaring more than this is not a result.
_FRAME_FIXED = 1 << 20


class _Malformed(Exception):
    """A worker sent something that is not a well-formed answer."""


class _Worker:
    __slots__ = ("index", "proc", "conn", "fd", "rbuf", "wbuf", "inflight", "ready", "host_pid",
                 "uid", "layers", "why", "dead", "writing")

    def __init__(self, index: int, proc, conn):
        self.index = index
        self.proc = proc
        self.conn = conn
        self.fd = conn.fileno()
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.inflight: deque[Wire] = deque()
        self.ready = False
        self.host_pid: int | None = None
        self.uid: int | None = None
        self.layers: dict = {}
        self.why: dict = {}
        self.dead = False
        self.writing = False


class SandboxPool:
    """A pool of pre-started sandbox workers that run untrusted `evaluate(response)` code."""

    def __init__(self, config: PoolConfig | None = None):
        config = config if config is not None else PoolConfig()
        self.config = config
        self.n_workers = config.n_workers
        self.limits = config.limits
        self.timeout_s = float(self.limits.timeout_s)
        self.grace_s = float(config.grace_s)
        self.allowed_modules = frozenset(self.limits.allowed_modules)
        self._scratch_parent = config.scratch_root
        self._depth = max(1, int(config.pipeline_depth))
        self._sched = Scheduler(config.coalesce_max_inputs, config.coalesce_window_s)
        self._window_timer: asyncio.TimerHandle | None = None
        self._notices: set[str] = set()   # non-layer `why` keys logged already (third_party_modules)
        self._start_method = config.start_method
        self._start_timeout_s = config.start_timeout_s
        self._workers: list[_Worker] = []
        self._reaping: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx = None
        self._started = False
        self._closing = False
        self._ready_waiter: asyncio.Future | None = None
        self._fatal: str | None = None
        self._start_failures = 0
        self._watchdog: asyncio.TimerHandle | None = None
        self._scratch_root: str | None = None
        self._cgroups: JobCgroups | None = None
        self._cgroup_why = ""
        self._isolation: dict[str, bool] = {}
        self._why: dict[str, str] = {}
        self._counts = dict.fromkeys(STATUSES, 0)
        self._jobs = self._checks = self._dispatched = self._restarts = 0
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
        from .launcher import context

        self._loop = asyncio.get_running_loop()
        self._ctx, self._process_cls = context(self._start_method)
        self._scratch_root = tempfile.mkdtemp(prefix="sandbox_pool-", dir=self._scratch_parent)
        os.chmod(self._scratch_root, 0o711)  # job uids must traverse it to reach their dirs
        if "job_cgroup" not in self.limits.disable_layers:
            self._cgroups, self._cgroup_why = JobCgroups.create()
        # Safety net for a pool that is never closed (interrupted run, forgotten close()).
        self._finalizer = weakref.finalize(self, _abandon, self._workers, self._scratch_root, self._cgroups)
        self._ready_waiter = self._loop.create_future()
        self._started = True
        try:
            for i in range(self.n_workers):
                self._workers.append(self._spawn(i))
            await asyncio.wait_for(asyncio.shield(self._ready_waiter), self._start_timeout_s)
        except BaseException:
            await self.close()
            raise
        self._report_isolation()
        self._arm_watchdog()

    def _spawn(self, index: int) -> _Worker:
        from .worker import worker_main

        cgroup, why = None, self._cgroup_why
        if self._cgroups is not None:
            try:
                cgroup = self._cgroups.worker(index, self.limits.memory_mb, self.limits.max_procs)
            except OSError as e:
                why = f"cannot create the worker's cgroup: {e.strerror}"
        spec = WorkerSpec(self.limits, index, self._scratch_root, cgroup, why)
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._process_cls(target=worker_main, args=(spec, child),
                                 name=f"sandbox-worker-{index}", daemon=True)
        proc.start()
        child.close()
        w = _Worker(index, proc, parent)
        os.set_blocking(w.fd, False)
        _widen_send_buffer(w.fd)
        self._loop.add_reader(w.fd, self._on_readable, w)
        return w

    async def close(self) -> None:
        if self._closing or not self._started:
            return
        self._closing = True
        if self._watchdog:
            self._watchdog.cancel()
        if self._window_timer:
            self._window_timer.cancel()
        err = RuntimeError("SandboxPool closed")
        for job in self._sched.drain():
            if not job.future.done():
                job.future.set_exception(err)
        for w in self._workers:
            for wire in w.inflight:
                for job in wire.parts:
                    if not job.future.done():
                        job.future.set_exception(err)
            w.inflight.clear()
            self._detach(w)
            try:
                w.proc.kill()  # the supervisor follows via its parent-death signal
            except Exception:
                pass
        for w in self._workers:
            await self._reap(w.proc)
        await asyncio.gather(*self._reaping, return_exceptions=True)   # replaced workers too
        if self._ready_waiter and not self._ready_waiter.done():
            self._ready_waiter.cancel()
        if self._scratch_root:
            remove_tree(self._scratch_root)
        if self._cgroups is not None:
            deadline = time.monotonic() + 5.0  # jobs die with their zygote, a moment after it
            while not self._cgroups.empty() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._cgroups.remove()
        self._finalizer.detach()

    async def _reap(self, proc, patience_s: float = 5.0) -> None:
        deadline = time.monotonic() + patience_s
        try:
            while proc.exitcode is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if proc.exitcode is not None:
                proc.close()
        except ValueError:  # already closed by an earlier reap
            pass

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
        isolation = dict(self._isolation)
        return {
            "jobs": self._jobs,
            "checks": self._checks,
            **self._counts,
            "dispatched": self._dispatched,
            "busy_s": self._busy_s,
            "workers": self.n_workers,
            "restarts": self._restarts,
            "pids": [w.proc.pid for w in self._workers if not w.dead],
            "uids": [w.uid for w in self._workers if not w.dead],
            "isolation": isolation,
            "degraded": [k for k in LAYERS if not isolation.get(k, False)],
        }

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
            data = _dumps(inputs)
            if encoded is not None:
                encoded[id(inputs)] = (inputs, n, data)  # holding `inputs` keeps its id unique
        return code, _dumps(code), data, n

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

    @property
    def _next_id(self) -> int:
        """The id of the latest wire sent."""
        return self._sched.last_id

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
            best = None
            free = 0
            for w in self._workers:
                if w.ready and not w.dead and len(w.inflight) < self._depth:
                    free += 1  # workers, not pipeline slots: a split sent to one worker waits anyway
                    if best is None or len(w.inflight) < len(best.inflight):
                        best = w
            if best is None:
                return
            wire = sched.take(free)
            if not best.inflight:
                wire.started = time.monotonic()
            best.inflight.append(wire)
            self._dispatched += 1
            self._send(best, wire.payload())

    def _send(self, w: _Worker, parts: list) -> None:
        n = sum(map(len, parts))
        head = header(n)
        if w.wbuf:  # already backed up: queue behind what is pending
            w.wbuf += head
            for p in parts:
                w.wbuf += p
            return
        try:
            sent = os.writev(w.fd, [head, *parts])  # no joining copy of a large inputs payload
        except BlockingIOError:
            sent = 0
        except OSError as e:
            # Nothing of this wire reached the worker (it died before we noticed): its jobs
            # never ran, so they go back to the queue instead of failing with the worker.
            self._sched.requeue(w.inflight.pop())
            self._worker_died(w, f"connection lost ({e.strerror})")
            return
        if sent < len(head) + n:
            w.wbuf += memoryview(b"".join([head, *parts]))[sent:]
            self._flush(w)

    def _flush(self, w: _Worker) -> None:
        try:
            while w.wbuf:
                sent = os.write(w.fd, w.wbuf)
                del w.wbuf[:sent]
        except BlockingIOError:
            pass
        except OSError as e:
            self._connection_lost(w, e, unread=True)  # the last wire was not all written
            return
        if w.wbuf and not w.writing:
            self._loop.add_writer(w.fd, self._flush, w)
            w.writing = True
        elif not w.wbuf and w.writing:
            self._loop.remove_writer(w.fd)
            w.writing = False

    # ---- receiving ---------------------------------------------------------------------------

    def _on_readable(self, w: _Worker) -> None:
        # Nothing a worker sends may raise out of this callback: a malformed, oversized or
        # unexpected frame (or a bug here) fails that worker's job and replaces the worker.
        try:
            self._receive(w)
        except Exception as e:
            self._worker_died(w, one_line(f"malformed answer from the sandbox worker: {type(e).__name__}: {e}"))
            self._dispatch()

    def _receive(self, w: _Worker) -> None:
        try:
            data = os.read(w.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError as e:
            # ECONNRESET: the worker died with bytes of ours unread, so the last wire never ran.
            self._connection_lost(w, e, unread=e.errno == errno.ECONNRESET)
            return
        if not data:
            self._worker_died(w, self._exit_reason(w))
            return
        buf = w.rbuf
        buf += data
        frames, used = split_frames(buf)
        try:
            for frame in frames:
                if w.dead:
                    return
                self._on_message(w, orjson.loads(frame))
        finally:
            for frame in frames:
                frame.release()
            del buf[:used]        # consumed even if a frame failed: never parse it twice
        pending = next_frame_size(buf, 0)
        if pending is not None and pending > self._max_frame(w):
            raise _Malformed(f"frame of {pending} bytes announced")
        if not w.dead:
            self._dispatch()

    def _max_frame(self, w: _Worker) -> int:
        n = max((j.n for j in w.inflight), default=0)
        lim = self.limits
        return _FRAME_FIXED + 6 * lim.max_output_bytes + n * (6 * lim.max_value_chars + 4096)

    def _on_message(self, w: _Worker, msg) -> None:
        if type(msg) is list:
            self._on_result(w, msg)
        elif type(msg) is not dict:
            raise _Malformed(f"unexpected {type(msg).__name__}")
        elif "hello" in msg:
            w.ready = True
            w.host_pid = msg["hello"]
            w.uid = msg.get("uid")
            w.layers = msg["layers"]
            w.why = msg["why"]
            self._start_failures = 0
            for k, reason in w.why.items():   # notices that are not isolation layers, once a pool
                if k not in w.layers and k not in self._notices:
                    self._notices.add(k)
                    log.warning("sandbox_pool: %s", reason)
            if not self._isolation:
                self._isolation = dict(w.layers)
                self._why = dict(w.why)
            else:  # a replacement must not silently run with less isolation
                for k, v in w.layers.items():
                    if not v and self._isolation.get(k):
                        self._isolation[k] = False
                        self._why[k] = w.why.get(k, "")
                        log.warning("sandbox_pool: isolation layer %r lost on a restarted worker: %s",
                                    k, self._why[k])
            if self._ready_waiter and not self._ready_waiter.done() and all(x.ready for x in self._workers):
                self._ready_waiter.set_result(None)
        elif "fatal" in msg:
            log.error("sandbox_pool: worker %d failed: %s", w.index, msg["fatal"])
            self._worker_died(w, "worker failed: " + str(msg["fatal"]).strip().splitlines()[-1])
        else:
            raise _Malformed("unexpected message")

    def _on_result(self, w: _Worker, msg: list) -> None:
        if not w.inflight:
            raise _Malformed("an answer with no job in flight")
        wire = w.inflight[0]
        outcomes, recs, output, elapsed, busy = _decode_result(msg, wire)  # _Malformed: head crashes
        w.inflight.popleft()
        if w.inflight:
            w.inflight[0].started = time.monotonic()
        self._busy_s += busy
        counts = self._counts
        if recs:  # coalescing must not cost an innocent caller its verdicts
            kept = self._sched.rerun_bystanders(wire, outcomes, msg[1])
            if len(kept) != len(outcomes):
                outcomes = kept
                recs = [o for o in outcomes if o not in (OK_TRUE, OK_FALSE, OK_NONE)]
        self._checks += len(outcomes)
        counts["ok"] += len(outcomes) - len(recs)
        for o in recs:
            counts[o.status] += 1
        wire.resolve(outcomes, output, elapsed)

    # ---- failures ----------------------------------------------------------------------------

    def _exit_reason(self, w: _Worker) -> str:
        code = w.proc.exitcode
        if code is None:
            return "worker process died"
        return f"worker process died (exit status {code})"

    def _detach(self, w: _Worker) -> None:
        if w.dead:
            return
        w.dead = True
        try:
            self._loop.remove_reader(w.fd)
            if w.writing:
                self._loop.remove_writer(w.fd)
        except Exception:
            pass
        try:
            w.conn.close()
        except Exception:
            pass

    def _connection_lost(self, w: _Worker, e: OSError, *, unread: bool) -> None:
        # The supervisor reads one whole wire before it runs it. A lone in-flight wire that the
        # worker never finished reading never ran: it goes back to the queue rather than failing
        # 'crashed' (a job sent to a worker killed a moment before). With more wires in flight
        # the head may have been running, so it fails as the worker's job.
        if unread and len(w.inflight) == 1:
            self._sched.requeue(w.inflight.pop())
        self._worker_died(w, f"connection lost ({e.strerror})")

    def _worker_died(self, w: _Worker, reason: str) -> None:
        if w.dead:
            return
        was_ready = w.ready
        self._detach(w)
        try:
            w.proc.kill()
        except Exception:
            pass
        reap = self._loop.create_task(self._reap(w.proc, patience_s=30.0))
        self._reaping.add(reap)                  # a reference, and close() waits for it
        reap.add_done_callback(self._reaping.discard)
        inflight = list(w.inflight)
        w.inflight.clear()
        if inflight:  # the job it was running is lost; the ones queued behind it are not
            head = inflight[0]
            self._checks += head.n
            self._counts["crashed"] += head.n
            head.fail(reason)
            for wire in reversed(inflight[1:]):
                self._sched.requeue(wire)
        if self._closing:
            return
        if not was_ready:
            self._start_failures += 1
            if self._start_failures >= 3:
                self._break(f"workers keep failing to start ({reason})")
                return
        self._restarts += 1
        log.warning("sandbox_pool: worker %d replaced: %s", w.index, reason)
        try:
            self._workers[self._workers.index(w)] = self._spawn(w.index)
        except Exception as e:
            self._break(f"could not start a replacement worker: {e}")
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

    def _arm_watchdog(self) -> None:
        # Supervisors enforce deadlines themselves, so this fires only when a worker is wedged
        # (or an answer was lost); then the worker is replaced and its job counts as crashed.
        period = min(0.1, self.grace_s / 4)
        self._watchdog = self._loop.call_later(period, self._check_wedged)

    def _check_wedged(self) -> None:
        try:
            now = time.monotonic()
            limit = self.timeout_s + self.grace_s
            for w in list(self._workers):
                if not w.dead and w.inflight and now - w.inflight[0].started > limit:
                    self._worker_died(w, f"no answer from the sandbox worker within {limit:g} s; "
                                         "worker replaced")
        except Exception:
            log.exception("sandbox_pool: watchdog check failed")
        finally:
            if not self._closing:
                self._arm_watchdog()

    def _report_isolation(self) -> None:
        for layer in LAYERS:
            if not self._isolation.get(layer, False):
                log.warning("sandbox_pool: isolation layer %r unavailable (%s): %s", layer,
                            self._why.get(layer, "unknown"), _CONSEQUENCE[layer])


def _abandon(workers: list, scratch_root: str, cgroups: JobCgroups | None) -> None:
    for w in workers:
        try:
            w.proc.kill()
        except Exception:
            pass
    remove_tree(scratch_root)
    if cgroups is not None:
        cgroups.remove()  # best effort; a later pool sweeps what is left


def _widen_send_buffer(fd: int) -> None:
    # A job carrying a few hundred responses is ~0.2-1 MB; let it go out in one write.
    sock = socket.socket(fileno=fd)
    try:
        for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                break
            except OSError:
                continue
    finally:
        sock.detach()


def _dumps(obj) -> bytes:
    """orjson, except that lone surrogates (possible in decoded LLM text) become U+FFFD."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return orjson.dumps(_unsurrogate(obj))  # still raises for what JSON cannot carry


def _unsurrogate(obj):
    if type(obj) is str:
        return obj.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(obj, (list, tuple)):
        return [_unsurrogate(x) for x in obj]
    if isinstance(obj, dict):
        return {_unsurrogate(k): _unsurrogate(v) for k, v in obj.items()}
    return obj


def _value(value):
    """A verdict value as sent by a supervisor: a JSON scalar, or a tagged non-finite float /
    integer beyond 64 bits."""
    if type(value) in _SCALARS:
        return value
    if type(value) is dict and len(value) == 1:
        if type(value.get("f")) is str and value["f"] in _NONFINITE:
            return _NONFINITE[value["f"]]
        digits = value.get("i")
        if type(digits) is str and digits.isascii() and digits.lstrip("-").isdigit() and digits.count("-") <= 1:
            try:
                return int(digits)
            except ValueError:  # beyond the int<->str digit limit: kept as its text
                return digits
    raise _Malformed("invalid value")


def _decode_result(msg: list, job: Wire) -> tuple[list, list, str, float, float]:
    """Check a result frame against the job it answers; raise _Malformed on any mismatch.

    Returns (outcomes, the outcomes that came as records, output, elapsed, busy)."""
    if len(msg) != 6:
        raise _Malformed("result of the wrong shape")
    job_id, tags, recs, output, elapsed, busy = msg
    if job_id != job.id:
        raise _Malformed(f"answer for job {job_id!r} while job {job.id} was running")
    if (type(tags) is not str or type(recs) is not list or type(output) is not str
            or type(elapsed) not in (int, float) or type(busy) not in (int, float)):
        raise _Malformed("result fields of the wrong types")
    if len(tags) != job.n or tags.count("R") != len(recs):
        raise _Malformed(f"{len(tags)} verdicts for {job.n} inputs")
    if sum(map(tags.count, "TFNR")) != len(tags):
        raise _Malformed("unknown verdict tag")
    outcomes = list(map(_TAG_OUTCOME.get, tags))  # bare True/False/None verdicts; None for "R"
    decoded = []
    if recs:
        shared: dict = {}
        it = iter(recs)
        for i, tag in enumerate(tags):
            if tag != "R":
                continue
            rec = next(it)
            if type(rec) is not list or len(rec) != 3:
                raise _Malformed("verdict record of the wrong shape")
            code, value, detail = rec
            if type(code) is not int or not 0 <= code < len(CODE_TO_STATUS) or type(detail) is not str:
                raise _Malformed("invalid verdict record")
            if code == C_OK:
                o = Outcome("ok", _value(value), "")
            else:
                key = (code, detail)
                o = shared.get(key)
                if o is None:
                    o = shared[key] = Outcome(CODE_TO_STATUS[code], None, one_line(detail))
            outcomes[i] = o
            decoded.append(o)
    return outcomes, decoded, output, float(elapsed), float(busy)
