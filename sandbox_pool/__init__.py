"""Safe, fast execution of untrusted AutoIF verifier code (`evaluate(response) -> bool`).

    async with SandboxPool(workers=4, timeout_s=2.0, memory_mb=512) as pool:
        outcomes = await pool.evaluate(code, inputs)          # JobResult: one Outcome per input
        results = await pool.evaluate_many([(code, inputs), ...])

Process layout per worker (started once, reused for every job):

    pool (asyncio)  --socket-->  supervisor  (worker.py -> supervisor.py; fresh interpreter,
                                  |           empty environment, own net/mount namespaces)
                                  +-- zygote  (zygote.py; PID 1 of the worker's PID namespace)
                                       +-- job   (one fork per job: confine.py, then runner.py)

A job is confined before any of its code runs: rlimits (address space, CPU, processes,
file size, open files), no_new_privs, a Landlock ruleset (writes only beneath the
worker's scratch dir, reads only of the interpreter and system libraries, no TCP,
no signals or abstract sockets outside the job), and a dedicated unprivileged uid.
After each job the zygote kills everything left in the namespace and removes the
job's scratch dir. Layers the host cannot provide are reported once at start and in
stats()["degraded"].
"""

from .outcome import JobResult, Outcome
from .pool import SandboxPool
from .precheck import DEFAULT_ALLOWED_MODULES, precheck

__all__ = ["SandboxPool", "Outcome", "JobResult", "precheck", "DEFAULT_ALLOWED_MODULES"]
