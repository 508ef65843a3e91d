"""The pool's worker processes: starting them, replacing one that died, reaping, the
watchdog, and what isolation they report.

A worker is one process tree (supervisor, zygotes, jobs) behind one socket; this module
knows their processes and sockets, not the jobs they run: it hands the wires a lost worker
had in flight back to the pool, which decides what becomes of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import weakref
from collections import deque
from typing import Callable

from ..config import PoolConfig
from ..kernel.cgroups import JobCgroups
from ..kernel.scratch import remove_tree
from ..limits import WorkerSpec
from .connection import Connection
from .scheduler import Wire

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
# Workers that die before their first hello this many times in a row break the pool.
_START_FAILURES = 3


class Worker:
    """One worker process, its connection and the wires it was sent (oldest first)."""

    __slots__ = ("index", "proc", "conn", "inflight", "ready", "host_pid", "uid", "layers", "why",
                 "dead")

    def __init__(self, index: int, proc):
        self.index = index
        self.proc = proc
        self.conn: Connection | None = None
        self.inflight: deque[Wire] = deque()
        self.ready = False  # it said hello
        self.host_pid: int | None = None
        self.uid: int | None = None
        self.layers: dict = {}
        self.why: dict = {}
        self.dead = False

    def exit_reason(self) -> str:
        code = self.proc.exitcode
        if code is None:
            return "worker process died"
        return f"worker process died (exit status {code})"


class Workers:
    """Starts, replaces, watches and stops the pool's worker processes."""

    def __init__(self, config: PoolConfig, on_readable: Callable[[Worker], None],
                 on_write_error: Callable[[Worker, OSError], None]):
        self.config = config
        self.limits = config.limits
        self.all: list[Worker] = []
        self._on_readable = on_readable
        self._on_write_error = on_write_error
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx = self._process_cls = None
        self.scratch_root: str | None = None
        self._cgroups: JobCgroups | None = None
        self._cgroup_why = ""
        self._finalizer = None
        self._reaping: set[asyncio.Task] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._closing = False
        self._start_failures = 0
        self.restarts = 0
        self.isolation: dict[str, bool] = {}  # each layer: held by every worker so far
        self.why: dict[str, str] = {}
        self._notices: set[str] = set()   # non-layer `why` keys logged already (third_party_modules)

    # ---- starting ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start every worker (they say hello once ready: see hello())."""
        from .launcher import context

        self._loop = loop
        self._ctx, self._process_cls = context(self.config.start_method)
        self.scratch_root = tempfile.mkdtemp(prefix="sandbox_pool-", dir=self.config.scratch_root)
        os.chmod(self.scratch_root, 0o711)  # job uids must traverse it to reach their dirs
        if "job_cgroup" not in self.limits.disable_layers:
            self._cgroups, self._cgroup_why = JobCgroups.create()
        # Safety net for a pool that is never closed (interrupted run, forgotten close()).
        self._finalizer = weakref.finalize(self, _abandon, self.all, self.scratch_root, self._cgroups)
        for i in range(self.config.n_workers):
            self.all.append(self._spawn(i))

    def _spawn(self, index: int) -> Worker:
        from ..worker.entry import worker_main

        cgroup, why = None, self._cgroup_why
        if self._cgroups is not None:
            try:
                cgroup = self._cgroups.worker(index, self.limits.memory_mb, self.limits.max_procs)
            except OSError as e:
                why = f"cannot create the worker's cgroup: {e.strerror}"
        spec = WorkerSpec(self.limits, index, self.scratch_root, cgroup, why)
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._process_cls(target=worker_main, args=(spec, child),
                                 name=f"sandbox-worker-{index}", daemon=True)
        proc.start()
        child.close()
        w = Worker(index, proc)
        w.conn = Connection(parent, self._loop, lambda: self._on_readable(w),
                            lambda e: self._on_write_error(w, e))
        return w

    def hello(self, w: Worker, msg: dict) -> bool:
        """Note a worker's hello (its pid, uid and isolation layers); True once all are ready."""
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
        if not self.isolation:
            self.isolation = dict(w.layers)
            self.why = dict(w.why)
        else:  # a replacement must not silently run with less isolation
            for k, v in w.layers.items():
                if not v and self.isolation.get(k):
                    self.isolation[k] = False
                    self.why[k] = w.why.get(k, "")
                    log.warning("sandbox_pool: isolation layer %r lost on a restarted worker: %s",
                                k, self.why[k])
        return all(x.ready for x in self.all)

    def report_isolation(self) -> None:
        for layer in LAYERS:
            if not self.isolation.get(layer, False):
                log.warning("sandbox_pool: isolation layer %r unavailable (%s): %s", layer,
                            self.why.get(layer, "unknown"), _CONSEQUENCE[layer])

    # ---- choosing ------------------------------------------------------------------------------

    def pick(self, depth: int) -> tuple[Worker | None, int]:
        """The ready worker with the fewest wires in flight (below `depth`), and how many
        workers could take a wire now."""
        best = None
        free = 0
        for w in self.all:
            if w.ready and not w.dead and len(w.inflight) < depth:
                free += 1  # workers, not pipeline slots: a split sent to one worker waits anyway
                if best is None or len(w.inflight) < len(best.inflight):
                    best = w
        return best, free

    # ---- losing one ----------------------------------------------------------------------------

    def lose(self, w: Worker) -> list[Wire]:
        """Stop listening to `w`, kill it and reap it in the background. Returns the wires it
        had in flight, oldest first (the head is the one it may have been running)."""
        if w.dead:
            return []
        w.dead = True
        w.conn.close()
        try:
            w.proc.kill()
        except Exception:
            pass
        reap = self._loop.create_task(_reap(w.proc, patience_s=30.0))
        self._reaping.add(reap)                  # a reference, and close() waits for it
        reap.add_done_callback(self._reaping.discard)
        inflight = list(w.inflight)
        w.inflight.clear()
        return inflight

    def replace(self, w: Worker, reason: str) -> str | None:
        """Start a replacement for the lost worker `w`. Returns why the pool cannot go on
        (workers keep dying before they are ready, or none can be started), else None."""
        if not w.ready:
            self._start_failures += 1
            if self._start_failures >= _START_FAILURES:
                return f"workers keep failing to start ({reason})"
        self.restarts += 1
        log.warning("sandbox_pool: worker %d replaced: %s", w.index, reason)
        try:
            self.all[self.all.index(w)] = self._spawn(w.index)
        except Exception as e:
            return f"could not start a replacement worker: {e}"
        return None

    # ---- the watchdog --------------------------------------------------------------------------

    def watch(self, on_wedged: Callable[[Worker, str], None]) -> None:
        """Call on_wedged for a worker whose head wire is not answered within timeout_s +
        grace_s of becoming the head. Supervisors enforce deadlines themselves, so this fires
        only when a worker is wedged (or an answer was lost)."""
        period = min(0.1, self.config.grace_s / 4)
        self._watchdog = self._loop.call_later(period, self._check_wedged, on_wedged)

    def _check_wedged(self, on_wedged: Callable[[Worker, str], None]) -> None:
        try:
            now = time.monotonic()
            limit = self.limits.timeout_s + self.config.grace_s
            for w in list(self.all):
                if not w.dead and w.inflight and now - w.inflight[0].started > limit:
                    on_wedged(w, f"no answer from the sandbox worker within {limit:g} s; worker replaced")
        except Exception:
            log.exception("sandbox_pool: watchdog check failed")
        finally:
            if not self._closing:
                self.watch(on_wedged)

    # ---- stopping ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Kill every worker, wait for them, and remove the scratch dir and job cgroups."""
        self._closing = True
        if self._watchdog:
            self._watchdog.cancel()
        for w in self.all:
            w.dead = True
            w.conn.close()
            try:
                w.proc.kill()  # the supervisor follows via its parent-death signal
            except Exception:
                pass
        for w in self.all:
            await _reap(w.proc)
        await asyncio.gather(*self._reaping, return_exceptions=True)   # replaced workers too
        if self.scratch_root:
            remove_tree(self.scratch_root)
        if self._cgroups is not None:
            deadline = time.monotonic() + 5.0  # jobs die with their zygote, a moment after it
            while not self._cgroups.empty() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._cgroups.remove()
        if self._finalizer is not None:
            self._finalizer.detach()


async def _reap(proc, patience_s: float = 5.0) -> None:
    deadline = time.monotonic() + patience_s
    try:
        while proc.exitcode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if proc.exitcode is not None:
            proc.close()
    except ValueError:  # already closed by an earlier reap
        pass


def _abandon(workers: list, scratch_root: str, cgroups: JobCgroups | None) -> None:
    for w in workers:
        try:
            w.proc.kill()
        except Exception:
            pass
    remove_tree(scratch_root)
    if cgroups is not None:
        cgroups.remove()  # best effort; a later pool sweeps what is left
