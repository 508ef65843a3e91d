"""Safe, fast execution of untrusted AutoIF verifier code (`evaluate(response) -> bool`).

    config = PoolConfig(workers=4, limits=Limits(timeout_s=2.0, memory_mb=512))
    async with SandboxPool(config) as pool:
        outcomes = await pool.evaluate(code, inputs)          # JobResult: one Outcome per input
        results = await pool.evaluate_many([(code, inputs), ...])

Process layout per worker (started once, reused for every job); the subpackage named
after each runs there:

    pool (asyncio, host/)  --socket-->  supervisor  (worker/entry.py -> worker/supervisor.py;
                                         |           fresh interpreter, empty environment,
                                         |           own net/mount namespaces)
                                         +-- zygote  (worker/zygote.py; PID 1 of the worker's
                                         |    |       PID namespace)
                                         |    +-- job   (one fork per job: kernel/confine.py,
                                         |              then worker/runner.py)
                                         +-- zygote  (the same, with the allowed third-party
                                              +-- job  modules imported, in a PID namespace of
                                                       its own: only code naming one of them
                                                       is forked from it)

kernel/ holds the kernel-facing isolation (namespaces, Landlock, cgroups, rlimits, scratch
quotas) that these processes apply; the plain types they exchange (settings, limits,
outcomes, frame format) sit at the top level.

A job is confined before any of its code runs: it joins its worker's job cgroup
(memory with swap off, process count: children and shared memory included), then
rlimits (address space, CPU, processes, file size, open files), no_new_privs, a
Landlock ruleset (writes only beneath the worker's scratch dir, reads only of the
interpreter and system libraries, no TCP, no signals or abstract sockets outside the
job), and a dedicated unprivileged uid. Workers have their own PID, network, mount and
IPC namespaces, and each job an IPC namespace of its own. After each job the zygote kills
everything left in the namespace and removes the job's scratch. Its verdicts reach the pool
only as data that the supervisor and then the pool validate; anything malformed fails that job
alone, and a watchdog resolves every job within timeout_s + grace_s. Layers the host
cannot provide are reported once at start and in stats()["degraded"].

The import allowlist (host/precheck.py) is a filter for honest mistakes, not a security layer.
"""

from .config import PoolConfig
from .host.pool import SandboxPool
from .host.precheck import precheck
from .limits import DEFAULT_ALLOWED_MODULES, Limits
from .outcome import JobResult, Outcome

__all__ = ["SandboxPool", "PoolConfig", "Limits", "Outcome", "JobResult", "precheck",
           "DEFAULT_ALLOWED_MODULES"]
