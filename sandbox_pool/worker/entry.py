"""Entry point of a pool worker process (started once by multiprocess).

The worker enters fresh network, PID, mount and IPC namespaces (its children land in the new
PID namespace; its first child, the zygote, becomes PID 1 there), then re-executes
itself as a fresh interpreter running the supervisor, with an empty environment:
none of the pool process' memory (secrets in its heap or environment,
multiprocess state) survives into the process every job is forked from, and
without multiprocess/dill that image is smaller, so every per-job fork is cheaper.
Namespaces and the parent-death signal survive the exec.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

import orjson

from ..kernel import isolation
from ..limits import WorkerSpec

# The package is registered bare, so its __init__ (the pool: asyncio, multiprocess, ssl...) never
# runs there: that would put ~6 MB more into the zygote, which every job's fork copies the page
# tables of and every job's exit tears down again.
_BOOT = "import sys, json; a = json.loads(sys.argv[1]); sys.path[:0] = a['path']; " \
        "p = type(sys)('sandbox_pool'); p.__path__ = [a['pkg']]; sys.modules['sandbox_pool'] = p; " \
        "from sandbox_pool.worker.supervisor import boot; boot(a)"


def _enter_namespaces(disabled: set[str]) -> tuple[dict, dict]:
    layers: dict[str, bool] = {}
    why: dict[str, str] = {}
    wanted = {"pid_namespace": isolation.CLONE_NEWPID, "net_namespace": isolation.CLONE_NEWNET,
              "scratch_quota": isolation.CLONE_NEWNS, "ipc_namespace": isolation.CLONE_NEWIPC}
    for layer in list(wanted):
        if layer in disabled:
            layers[layer] = False
            why[layer] = "disabled by configuration"
            del wanted[layer]
    flags = 0
    for f in wanted.values():
        flags |= f
    try:
        if flags:
            isolation.unshare(flags)
        for layer in wanted:
            layers[layer] = True
    except OSError:
        for layer, flag in wanted.items():  # maybe only one of them is permitted
            try:
                isolation.unshare(flag)
                layers[layer] = True
            except OSError as e:
                layers[layer] = False
                why[layer] = f"unshare failed: {e.strerror}"
    return layers, why


def _mount_scratch(spec: WorkerSpec, layers: dict, why: dict) -> None:
    """Give this worker's job dirs their own size-capped tmpfs (private to our mount namespace).

    Job files then count against max_scratch_mb instead of the host's disk or RAM, they are
    invisible outside the worker, and a dirty tmpfs is replaced by a fresh mount instead of
    being walked. It sits one level below the scratch dir, so the Landlock rule on the scratch
    dir (an inode on the host) still covers each new mount.
    """
    scratch = os.path.join(spec.scratch_root, f"w{spec.index}")
    os.makedirs(scratch, mode=0o711, exist_ok=True)
    if not layers.get("scratch_quota"):
        return
    try:
        os.makedirs(os.path.join(scratch, "jobs"), mode=0o711, exist_ok=True)
        isolation.mount_private_tmpfs(os.path.join(scratch, "jobs"), spec.limits.max_scratch_mb,
                                      spec.limits.max_scratch_files)
    except OSError as e:
        layers["scratch_quota"] = False
        why["scratch_quota"] = f"mounting a tmpfs failed: {e.strerror}"


def _exec_supervisor(args: dict, keep_env: bool) -> None:
    """Replace this process with a fresh interpreter running the supervisor (returns on failure)."""
    env = dict(os.environ) if keep_env else {}
    os.set_inheritable(args["fd"], True)
    try:
        # -I: no PYTHON* variables, no user site, no cwd on sys.path.
        os.execve(sys.executable, [sys.executable, "-I", "-c", _BOOT, orjson.dumps(args).decode()], env)
    except OSError:
        os.set_inheritable(args["fd"], False)


def worker_main(spec: WorkerSpec, conn) -> None:
    try:
        # Die with the pool (our parent is multiprocess' forkserver, which exits with it).
        isolation.set_parent_death_signal(signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if spec.limits.nice:
            os.nice(spec.limits.nice)            # inherited by the supervisor, zygote and every job
        disabled = set(spec.limits.disable_layers)
        layers, why = _enter_namespaces(disabled)
        _mount_scratch(spec, layers, why)
        args = {"spec": spec, "fd": conn.fileno(), "layers": layers, "why": why,
                "path": [p for p in sys.path if p and os.path.isdir(p)],
                "pkg": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        _exec_supervisor(args, keep_env="env_scrub" in disabled)
        # exec failed: run the supervisor here (heavier image, environment only scrubbed in place)
        from .supervisor import boot

        boot(args)
    except BaseException:
        try:
            conn.send_bytes(orjson.dumps({"fatal": traceback.format_exc(limit=8)}))
        finally:
            os._exit(1)
