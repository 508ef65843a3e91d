"""Small helpers shared by the benchmarks: --quick flag, medians, result files, tables.

Convention: each benchmark `python -m bench.NAME [--quick]` repeats every measurement,
reports medians, prints a table and writes bench/results/NAME.json with a top-level
"ratios" object (the figures its targets are stated in).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser that already has --quick (a run well under 2 minutes)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help="smaller run (under 2 minutes)")
    return p


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def repeat(fn: Callable[[], float], times: int = 3) -> list[float]:
    """Call a measurement `times` times; returns the list (take its median)."""
    return [fn() for _ in range(times)]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials (95% at z=1.96); None when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and gives a non-zero width at
    k = 0 or k = n, which small benchmark samples hit often."""
    if n <= 0:
        return None
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share(k: int, n: int) -> dict:
    """k of n as a result entry: the counts, the ratio and its Wilson 95% interval."""
    interval = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None,
            "lower95": interval[0] if interval else None, "upper95": interval[1] if interval else None}


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (recorded beside every figure: the CPU is shared)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    load = loadavg()
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_at_end": load, "note": "shared machine; other work may run"}


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process plus its reaped descendants), from /proc."""
    table: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue                             # exited while we looked
        fields = raw[raw.rindex(b")") + 2:].split()  # the command name may hold spaces
        # fields[1] = ppid; [11..14] = utime, stime, cutime, cstime (proc(5), counted from state)
        table[int(name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / _TICKS)
    return table


def tree_cpu_s(roots: Iterable[int]) -> float:
    """CPU seconds used so far by the processes `roots` and everything below them.

    Each live process counts its own time plus that of the children it has reaped (cutime,
    cstime), so a process that forks and reaps a child per job, as a sandbox zygote does,
    carries the CPU of every finished job. Read when no job is in flight, the sum covers all
    work of the tree. Resolution is one clock tick (10 ms): measure runs of seconds.
    """
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [p for p in roots if p in table], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def write_results(name: str, data: dict, ratios: dict[str, float]) -> Path:
    """Write bench/results/NAME.json: `data` plus a top-level "ratios" and machine info."""
    out = {"bench": name, **data, "ratios": ratios}
    out.setdefault("machine", machine())
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    return path


def table(rows: list[list[str]]) -> str:
    """Left-aligned text table; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def start_simulator(*extra: str):
    """`autoif sim` in its own process (so it never shares the measured event loop).

    Returns (Popen, base URL). `extra` are sim CLI flags, e.g. "--zero-latency".
    """
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "sim", "--host", "127.0.0.1", "--port", "0", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, line.strip().rsplit(" ", 1)[1]


def stop_process(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except Exception:
        proc.kill()
        proc.wait()
