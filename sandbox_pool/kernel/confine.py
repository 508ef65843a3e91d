"""Confinement applied inside a freshly forked job process, before untrusted code runs.

Order matters: the job joins its worker's job cgroups first (as root, before it can
allocate anything that should count), then enters an IPC namespace of its own, fds are
cleaned next (so nothing of the supervisor leaks), then rlimits, then no_new_privs + Landlock
(which needs them), and the uid switch last, since dropping root also drops the right to do
the steps before it.
"""

from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass

from . import isolation


class SetupError(Exception):
    """A confinement step that was promised failed; the job must not run."""

    def __init__(self, layer: str, reason: str):
        super().__init__(f"{layer}: {reason}")
        self.layer = layer


@dataclass(frozen=True)
class Plan:
    """The same for every job of a worker; built once."""

    memory_mb: int
    cpu_s: int
    max_procs: int | None  # None: RLIMIT_NPROC would count the host user's processes, so skip it
    max_file_mb: int
    max_open_files: int
    ruleset_fd: int | None  # Landlock ruleset built once by the supervisor
    uid: int | None  # unprivileged uid to become; None when not running as root
    devnull_fd: int  # opened once, before the zygote starts; becomes the job's stdin
    parent_pid: int  # the zygote, as the job sees it
    cgroup_fds: tuple[int, ...] = ()  # cgroup.procs files of the job cgroups (memory, pids)
    new_ipc_ns: bool = False  # an IPC namespace of the job's own: its SysV objects die with it


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _vm_size_bytes() -> int:
    fd = os.open("/proc/self/statm", os.O_RDONLY)  # raw fd: far cheaper than open() in a fresh fork
    try:
        return int(os.read(fd, 64).split()[0]) * _PAGE
    finally:
        os.close(fd)


def _close_fds_except(keep: set[int]) -> None:
    lo = 0
    for fd in sorted(keep):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def confine(plan: Plan, scratch: str, out_w: int) -> None:
    """Confine the calling (job) process. Raises SetupError naming the layer that failed."""
    for fd in plan.cgroup_fds:
        try:
            os.write(fd, b"0")  # "0": the writing process itself
        except OSError as e:
            raise SetupError("job_cgroup", str(e)) from None
    if plan.new_ipc_ns:  # while still root; after the cgroup join, so the namespace is charged there
        try:
            isolation.unshare(isolation.CLONE_NEWIPC)
        except OSError as e:
            raise SetupError("ipc_namespace", str(e)) from None
    os.dup2(plan.devnull_fd, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    keep = {0, 1, 2}
    if plan.ruleset_fd is not None:
        keep.add(plan.ruleset_fd)
    # Drops the pool connection and every other supervisor fd the job must not touch.
    _close_fds_except(keep)

    # Always a session of its own: kill(0, ...) from the job must not reach the pool's group.
    os.setsid()
    os.chdir(scratch)

    try:
        vm = _vm_size_bytes()
        mem = vm + plan.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        # Soft limit sends SIGXCPU; the hard limit one second later is a SIGKILL backstop.
        resource.setrlimit(resource.RLIMIT_CPU, (plan.cpu_s, plan.cpu_s + 1))
        fsize = plan.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.max_open_files, plan.max_open_files))
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
        if plan.max_procs is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (plan.max_procs, plan.max_procs))
    except (OSError, ValueError) as e:
        raise SetupError("rlimits", str(e)) from None

    try:
        isolation.set_no_new_privs()
    except OSError as e:
        raise SetupError("no_new_privs", str(e)) from None

    if plan.ruleset_fd is not None:
        try:
            isolation.restrict_self(plan.ruleset_fd)
        except OSError as e:
            raise SetupError("landlock_fs", str(e)) from None
        os.close(plan.ruleset_fd)

    if plan.uid is not None:
        try:
            os.setgroups([])
            os.setresgid(plan.uid, plan.uid, plan.uid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        except OSError as e:
            raise SetupError("setuid", str(e)) from None
        if os.getuid() != plan.uid or os.geteuid() != plan.uid:
            raise SetupError("setuid", "uid did not change")
    # Die with the zygote even where no PID namespace does it for us (set after the uid switch,
    # which clears it).
    isolation.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != plan.parent_pid:  # it died before that took effect
        os._exit(0)
