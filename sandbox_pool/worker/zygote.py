"""The zygote: PID 1 of a worker's PID namespace, it forks, times and cleans up jobs.

It is forked once from the fully warmed-up supervisor and then does as little as
possible between forks. Every fork write-protects the forking process' memory, so
each page the forker dirties afterwards costs a copy-on-write fault; with the pool
protocol, decoding, parsing and compiling left to the supervisor (which never forks
again), the zygote dirties few pages between forks. Every page present here is
also copied into each job's page tables at fork and torn down at its exit, which is why
the supervisor boots without the pool's package __init__ (entry.py).

Per job: read a small request, create the job's scratch dir and output pipe, fork
the job, enforce the wall-clock deadline while draining output, then kill and reap
everything the job left behind, remove every SysV IPC object left in the worker's
IPC namespace, remove the scratch dir (replacing the whole scratch tmpfs when the
job left anything in it, so no file tree can defeat the cleanup) and reply with
how the job ended. Inputs and verdicts travel through two memfds the supervisor owns; the job
maps/reads them itself, so their bytes never pass through this process.
"""

from __future__ import annotations

import marshal
import mmap
import os
import select
import signal
import struct
import sys
import time

import orjson

from ..kernel import confine as confine_mod
from ..kernel import isolation
from ..kernel.scratch import remove_tree
from ..limits import Limits
from . import runner, verdicts

# seq, code_id, evict_id (-1: none), code_len, n_inputs, flags, n_parts; then the code, then
# n_parts u32 part sizes (a merged job: each caller's inputs get the CPU budget they would alone)
REQUEST = struct.Struct("<qqqIIII")
PART = struct.Struct("<I")
REPLY = struct.Struct("<iiddQI")  # wait status, timed_out, job cpu s, elapsed s, output total, output kept
FLAG_DROP_LANDLOCK = 1
FLAG_DROP_SETUID = 2
FLAG_DROP_CGROUP = 4
FLAG_CODE_MARSHALLED = 8  # the code travels as a marshalled code object, else as source text
FLAG_DROP_JOB_IPC = 16
SETUP_FAILED_EXIT = 111
_READ_CHUNK = 1 << 16


def read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def write_all(fd: int, data) -> None:
    data = memoryview(data)
    while data:
        data = data[os.write(fd, data):]


class Zygote:
    def __init__(self, limits: Limits, ctl_fd: int, job_fd: int, verdict_fd: int, devnull: int,
                 scratch: str, ruleset_fd: int | None, uid: int | None, pid_ns: bool,
                 prebound: dict, *, scratch_tmpfs: bool, ipc_ns: bool, cgroup_fds: tuple[int, ...],
                 third_party: bool, ipc_per_job: bool):
        self.limits = limits
        self.ctl = ctl_fd
        self.job_fd = job_fd
        self.verdict_fd = verdict_fd
        self.devnull = devnull
        self.scratch = scratch  # job dirs go here; a tmpfs of this worker's own when scratch_tmpfs
        self.scratch_tmpfs = scratch_tmpfs
        self.ipc_ns = ipc_ns  # the worker has an IPC namespace of its own: sweeping it is safe
        # Where the worker could unshare one, each job gets an IPC namespace too: its SysV
        # objects die with it and no two jobs ever share one. Else the worker's is swept.
        self.ipc_per_job = ipc_per_job and ipc_ns
        self.cgroup_fds = cgroup_fds  # cgroup.procs files each job joins (memory, pids)
        self.ruleset_fd = ruleset_fd
        self.uid = uid
        self.pid = os.getpid()
        self.pid_ns = pid_ns and self.pid == 1
        self.prebound = prebound
        self.third_party = third_party  # the larger CPU budget of Limits.cpu_budget_s
        self.codes: dict[int, object] = {}
        self.plan: confine_mod.Plan | None = None  # rebuilt only when a layer is dropped
        self.poller = select.poll()  # reused: every object this process allocates costs COW faults
        self.seq = 0
        self.tag = os.urandom(4).hex()  # job dir names never collide with a predecessor's
        # The bare fork is only sound while this process has a single thread.
        self.fork = isolation.fork_bare if len(os.listdir("/proc/self/task")) == 1 else os.fork

    # ---- protocol ---------------------------------------------------------------------------

    def serve(self) -> None:
        if not self.pid_ns:
            try:  # orphans of a job must come back to us to be reaped
                isolation.set_child_subreaper()
            except OSError:
                pass
        self.kill_leftovers()  # of a predecessor in this slot (matters without a PID namespace)
        for name in os.listdir(self.scratch):  # its job dirs, if it died mid-job
            self.remove_scratch(os.path.join(self.scratch, name))
        while True:
            try:
                head = read_exact(self.ctl, REQUEST.size)
            except (EOFError, OSError):
                os._exit(0)  # the supervisor is gone
            seq, code_id, evict_id, code_len, n, flags, n_parts = REQUEST.unpack(head)
            if flags & FLAG_DROP_LANDLOCK and self.ruleset_fd is not None:
                os.close(self.ruleset_fd)
                self.ruleset_fd = None
                self.plan = None
            if flags & FLAG_DROP_SETUID:
                self.uid = None
                self.plan = None
            if flags & FLAG_DROP_CGROUP:
                self.cgroup_fds = ()
                self.plan = None
            if flags & FLAG_DROP_JOB_IPC:
                self.ipc_per_job = False
                self.plan = None
            if evict_id >= 0:
                self.codes.pop(evict_id, None)
            if code_len:
                raw = read_exact(self.ctl, code_len)
                # Compiled by the supervisor, which never forks again: compiling here would dirty
                # hundreds of this process' copy-on-write pages per new verifier.
                self.codes[code_id] = (marshal.loads(raw) if flags & FLAG_CODE_MARSHALLED
                                       else raw.decode("utf-8", "surrogatepass"))
            parts = ()
            if n_parts:
                raw = read_exact(self.ctl, n_parts * PART.size)
                parts = [v for (v,) in PART.iter_unpack(raw)]
            status, timed_out, cpu, elapsed, out_total, out = self.run_job(self.codes[code_id], n, parts)
            write_all(self.ctl, REPLY.pack(status, timed_out, cpu, elapsed, out_total, len(out)) + out)

    # ---- one job ----------------------------------------------------------------------------

    def _plan(self) -> confine_mod.Plan:
        lim = self.limits
        return confine_mod.Plan(
            memory_mb=lim.memory_mb, cpu_s=lim.cpu_s,
            max_procs=lim.max_procs if self.uid is not None else None,
            max_file_mb=lim.max_file_mb, max_open_files=lim.max_open_files,
            ruleset_fd=self.ruleset_fd, uid=self.uid, devnull_fd=self.devnull, parent_pid=self.pid,
            cgroup_fds=self.cgroup_fds, new_ipc_ns=self.ipc_per_job)

    def run_job(self, program, n: int, parts=()):
        lim = self.limits
        self.seq += 1
        scratch = os.path.join(self.scratch, f"j{self.tag}-{self.seq}")
        os.mkdir(scratch, 0o700)
        if self.uid is not None:
            os.chown(scratch, self.uid, self.uid)
        plan = self.plan
        if plan is None:
            plan = self.plan = self._plan()
        out_r, out_w = os.pipe()
        t0 = time.monotonic()
        pid = self.fork()
        if pid == 0:
            # [(first input index, CPU budget)] per part; a job that is not merged is one part
            budgets, at = [], 0
            for size in parts or (n,):
                budgets.append((at, lim.cpu_budget_s(size, self.third_party)))
                at += size
            self._job_child(plan, scratch, program, out_w, budgets)  # never returns
        os.close(out_w)
        os.set_blocking(out_r, False)
        out = bytearray()
        out_total = 0
        max_out = lim.max_output_bytes

        def drain() -> bool:
            """Read what is available; False once the pipe reached EOF."""
            nonlocal out_total
            while True:
                try:
                    chunk = os.read(out_r, _READ_CHUNK)
                except BlockingIOError:
                    return True
                if not chunk:
                    return False
                out_total += len(chunk)
                if len(out) < max_out:  # keep the head, keep reading so a flood never blocks
                    out.extend(chunk[: max_out - len(out)])

        pidfd = os.pidfd_open(pid)
        poller = self.poller
        poller.register(pidfd, select.POLLIN)
        poller.register(out_r, select.POLLIN)
        deadline = t0 + lim.timeout_s
        timed_out = False
        out_open = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            exited = False
            for fd, _ev in poller.poll(max(1, int(remaining * 1000 + 0.999))):
                if fd == pidfd:
                    exited = True
                elif not drain():
                    poller.unregister(out_r)
                    out_open = False
            if exited:
                break
        _, status, rusage = os.wait4(pid, 0)
        elapsed = time.monotonic() - t0
        poller.unregister(pidfd)
        if out_open:
            poller.unregister(out_r)
        os.close(pidfd)
        self.kill_leftovers(pid)  # nothing of the job runs past this point
        drain()
        os.close(out_r)
        if self.ipc_ns and not self.ipc_per_job:
            isolation.sweep_sysv_ipc()  # shared memory, queues, semaphores die with their job
        self.remove_scratch(scratch)
        return status, int(timed_out), rusage.ru_utime + rusage.ru_stime, elapsed, out_total, bytes(out)

    def _job_child(self, plan, scratch: str, program, out_w, budgets: list) -> None:
        writer = None
        try:
            writer = verdicts.Writer(mmap.mmap(self.verdict_fd, 0))
            try:
                # Decoded straight from the shared pages, before the rlimits, so that the memory
                # limit's baseline already includes the inputs.
                payload = mmap.mmap(self.job_fd, 0, prot=mmap.PROT_READ)
                view = memoryview(payload)
                inputs = orjson.loads(view)
                view.release()
                payload.close()
                confine_mod.confine(plan, scratch, out_w)  # closes every fd but stdio and the ruleset
            except confine_mod.SetupError as e:
                writer.add({"setup_error": str(e), "layer": e.layer}, verdicts.TAG_SETUP_ERROR)
                os._exit(SETUP_FAILED_EXIT)
            if "random" in sys.modules:
                sys.modules["random"].seed()  # forked jobs must not replay the same sequence
            # SIGPROF's default action ends the job once it has used its CPU budget; verdicts
            # already logged are kept. Code that catches or cancels it still meets RLIMIT_CPU
            # and the wall clock. A merged job re-arms the timer as each caller's part starts.
            signal.setitimer(signal.ITIMER_PROF, budgets[0][1])
            runner.run(program, inputs, writer, self.limits.max_value_chars, self.prebound, budgets[1:])
        except BaseException as e:
            if writer is not None and writer.pos == 0:  # say why instead of a bare exit code
                writer.add({"setup_error": f"internal error: {type(e).__name__}: {e}", "layer": "internal"},
                           verdicts.TAG_SETUP_ERROR)
            os._exit(70)
        os._exit(0)

    # ---- cleanup ------------------------------------------------------------------------------

    def remove_scratch(self, path: str) -> None:
        """Remove a job dir; never raises, whatever the job left in it."""
        try:
            os.rmdir(path)  # the common case: the job wrote nothing
            return
        except OSError:
            pass
        if self.scratch_tmpfs:
            try:  # one syscall pair, independent of how many files or how deep
                isolation.remount_private_tmpfs(self.scratch, self.limits.max_scratch_mb,
                                                self.limits.max_scratch_files)
                return
            except OSError:
                pass
        try:
            remove_tree(path)
        except Exception:  # e.g. MemoryError: the next job gets a fresh dir name anyway
            pass

    def kill_leftovers(self, job_pid: int | None = None) -> None:
        """Kill and reap every process a job left behind (daemonised grandchildren included)."""
        if self.pid_ns:
            # From a namespace's PID 1, kill(-1) reaches every other process in it and nothing else.
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    return
                except InterruptedError:
                    continue
        # Degraded: no namespace to tear down.
        if job_pid is not None:
            try:
                os.killpg(job_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.uid is not None:
            _kill_uid(self.uid)
        _kill_descendants()
        _reap(deadline=time.monotonic() + 1.0)


def _kill_uid(uid: int) -> None:
    # A helper running as the job's uid: its kill(-1) hits exactly that uid's processes,
    # atomically with respect to fork, so a fork loop cannot outrun it.
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _kill_descendants() -> None:
    me = os.getpid()
    for _ in range(3):
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        stat = f.read()
                    parents[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        victims = []
        for pid in parents:
            p, hops = parents.get(pid), 0
            while p and p != me and hops < 64:
                p, hops = parents.get(p), hops + 1
            if p == me and pid != me:
                victims.append(pid)
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _reap(deadline: float) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
