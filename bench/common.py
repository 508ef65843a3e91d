"""Small helpers shared by the benchmarks: --quick flag, medians, result files, tables.

Convention: each benchmark `python -m bench.NAME [--quick]` repeats every measurement,
reports medians, prints a table and writes bench/results/NAME.json with a top-level
"ratios" object (the figures its targets are stated in).
"""

from __future__ import annotations

import argparse
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


def machine() -> dict:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_at_end": load, "note": "shared machine; other work may run"}


def write_results(name: str, data: dict, ratios: dict[str, float]) -> Path:
    """Write bench/results/NAME.json: `data` plus a top-level "ratios" and machine info."""
    out = {"bench": name, **data, "ratios": ratios}
    out.setdefault("machine", machine())
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
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
