"""Orphan protection for the server processes this engine starts: whatever way the engine ends,
no server (nor a worker a server forked) outlives it.

  * `child_preexec`: the child sets prctl(PR_SET_PDEATHSIG, SIGKILL) before exec, so the kernel
    kills it if the engine dies, even by SIGKILL. PDEATHSIG fires when the *thread* that forked
    the child exits, so servers are spawned from a thread that outlives them;
  * PDEATHSIG reaches only the server's own process, so a tiny reaper process (one per engine)
    holds a pipe from the engine and, on EOF (the engine died, however), SIGKILLs every server
    group still registered -- workers included. A forked child closes its copy of the pipe;
  * an atexit hook and SIGTERM/SIGHUP hooks (installed only where the handler is still the
    default) kill every live group when the engine exits normally or is terminated.

`register` / `forget` keep the registry of live groups that all three act on. This is process-wide
state by nature (one reaper, one set of exit hooks per process), so it lives in this module alone.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

__all__ = ["SIGKILL", "child_preexec", "forget", "install_signal_hooks", "kill_all_servers", "killpg",
           "register"]

_PR_SET_PDEATHSIG = 1
SIGKILL = int(signal.SIGKILL)
_prctl = None
if sys.platform.startswith("linux"):
    try:  # resolved in the parent: the child must not load libraries between fork and exec
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        _prctl = None


def child_preexec(parent_pid: int) -> Callable[[], None]:
    """The preexec_fn of a server child: die with the engine (PDEATHSIG), even if it died already."""
    def setup() -> None:  # runs in the child after setsid, before exec: keep it minimal
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), SIGKILL)
    return setup


_live: dict[int, subprocess.Popen] = {}  # pgid -> leader, for the exit hooks
_live_lock = threading.RLock()  # re-entrant: the signal hook may run while the main thread holds it

# PDEATHSIG reaches only the server's leader process; workers it forked (SGLang's schedulers)
# would outlive a SIGKILLed engine. The reaper is a tiny process that holds the read end of a
# pipe from us: when we die, it sees EOF and SIGKILLs every server group still registered.
_REAPER_CODE = r"""
import os, signal, sys
groups = set()
for line in sys.stdin:
    op, _, pg = line.strip().partition(" ")
    if op == "+":
        groups.add(int(pg))
    elif op == "-":
        groups.discard(int(pg))
for pg in groups:
    try:
        os.killpg(pg, signal.SIGKILL)
    except OSError:
        pass
"""
_reaper: subprocess.Popen | None = None
_REAPER_ON = os.environ.get("AUTOIF_SERVER_REAPER", "1") != "0"  # "0": rely on PDEATHSIG alone


def _forget_reaper_in_child() -> None:
    """A forked child must not hold the reaper's pipe open, or the reaper would never see EOF
    while that child lives (e.g. fork-based worker pools)."""
    global _reaper
    reaper, _reaper = _reaper, None
    if reaper is not None and reaper.stdin is not None:
        try:
            reaper.stdin.close()
        except (OSError, ValueError):
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_reaper_in_child)


def _reaper_send(line: str) -> None:
    """Tell the reaper about a group (call with _live_lock held)."""
    global _reaper
    if not _REAPER_ON:
        return
    if _reaper is None or _reaper.poll() is not None:
        try:  # own session: a Ctrl-C on the terminal must not kill it before the engine cleans up
            _reaper = subprocess.Popen([sys.executable, "-S", "-c", _REAPER_CODE], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       close_fds=True, start_new_session=True)
        except OSError:
            _reaper = None
            return
    try:
        _reaper.stdin.write(f"{line}\n".encode())
        _reaper.stdin.flush()
    except (OSError, ValueError):
        pass


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group that may be gone already."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all_servers(grace: float = 2.0) -> None:
    """Kill every server group this process started and has not stopped yet."""
    with _live_lock:
        procs = dict(_live)
        _live.clear()
    if not procs:
        return
    for pgid in procs:
        killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pgid, proc in procs.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        killpg(pgid, SIGKILL)  # also reaches group members that outlived the leader
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        with _live_lock:
            _reaper_send(f"- {pgid}")


atexit.register(kill_all_servers)
_hooks_installed = False


def install_signal_hooks() -> None:
    """Kill our servers on SIGTERM/SIGHUP, then die of the signal as before. Only where the
    handler is still the default: an application that set its own keeps control."""
    global _hooks_installed
    if _hooks_installed or threading.current_thread() is not threading.main_thread():
        return
    _hooks_installed = True

    def on_signal(signum, frame):  # noqa: ARG001
        kill_all_servers()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, on_signal)
        except (ValueError, OSError):
            pass


def register(proc: subprocess.Popen) -> None:
    """A server group (led by `proc`, its own session) that the hooks and the reaper must kill."""
    with _live_lock:
        _live[proc.pid] = proc
        _reaper_send(f"+ {proc.pid}")


def forget(proc: subprocess.Popen) -> None:
    """The group is gone (stopped and reaped): no hook needs to kill it any more."""
    with _live_lock:
        if _live.get(proc.pid) is proc:
            del _live[proc.pid]
            _reaper_send(f"- {proc.pid}")
