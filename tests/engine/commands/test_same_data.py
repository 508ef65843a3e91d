"""Same command, same data: the demo on the simulator gives the same exports whether it runs
clean, is rerun after a server fault, after `kill -9`, or after one Ctrl-C, at 1 or 2 sandbox
workers.

The demo caps its queries (max_queries), so which instructions get data is decided by the
query grant rule; a rule that followed arrival order would export other instructions after a
fault. Every run is the real CLI in a subprocess. The runs mostly wait on the simulator's
clock, so the scenarios run side by side, each in its own run directory.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from engine.outcome import EXIT_INTERRUPTED, EXIT_LOST
from tests.engine.commands.test_run_resume import _reap_group, sim_process

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RUN_TIMEOUT_S = 120


def _popen(args: list[str], **kw) -> subprocess.Popen:
    # own session: the engine's sandbox workers stay in its process group, reaped after
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=ENV,
                            start_new_session=True, **kw)


def demo(run_dir: Path, workers: int, server: str | None = None) -> list[str]:
    # three times the simulator's pace: a run still lasts long enough to be stopped part way
    where = ["--server", server] if server else ["--backend", "sim", "--sim-speed", "3"]
    return ["run", "--demo", *where, "--output-dir", str(run_dir), "--pool-workers", str(workers),
            "--no-progress"]


def run(args: list[str]) -> tuple[int, str]:
    proc = _popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        _reap_group(proc)
    return proc.returncode, err


def run_ok(args: list[str]) -> None:
    rc, err = run(args)
    assert rc == 0, err[-3000:]


def exports(run_dir: Path) -> dict[str, list[bytes]]:
    """Every JSONL export's records without provenance, canonical and sorted."""
    out = {}
    for path in sorted((run_dir / "exports").glob("*.jsonl")):
        rows = []
        for line in path.read_bytes().splitlines():
            row = orjson.loads(line)
            row.pop("provenance", None)
            rows.append(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
        out[path.name] = sorted(rows)
    return out


def count(run_dir: Path, sql: str) -> int:
    try:
        db = sqlite3.connect(f"file:{run_dir / 'state.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:               # not created yet, or its tables not there yet
        return 0


ANSWERS = "SELECT COUNT(*) FROM llm_cache"
RESULTS = "SELECT COUNT(*) FROM records WHERE stage = 'final'"


def interrupted_then_rerun(run_dir: Path, workers: int, sig: int, sql: str, at: int) -> dict:
    """The demo, sent `sig` once `sql` counts `at` in its state, then the same command again.
    Returns what the interrupted run did: its exit status and how long it took to stop."""
    proc = _popen(demo(run_dir, workers), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while count(run_dir, sql) < at:
            assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        sent = time.monotonic()
        os.kill(proc.pid, sig)
        proc.communicate(timeout=30)
        stopped_s = time.monotonic() - sent
    finally:
        _reap_group(proc)
    interrupted = {"rc": proc.returncode, "stopped_s": stopped_s,
                   "summary": (run_dir / "summary.json").exists()}
    run_ok(demo(run_dir, workers))
    return interrupted


def faulty_then_rerun(run_dir: Path, workers: int) -> int:
    """The demo against a simulator that answers 60% of requests 503, then the same command
    on a sound one. Returns the faulty run's exit status."""
    with sim_process("--responder", "autoif", "--speed", "3", "--fail-rate", "0.6", "--seed", "3") as url:
        rc, _ = run(demo(run_dir, workers, server=url))
    run_ok(demo(run_dir, workers))
    return rc


SCENARIOS = {
    "clean, 2 workers": lambda d: run_ok(demo(d, 2)),
    "server fault, 1 worker": lambda d: faulty_then_rerun(d, 1),
    "server fault, 2 workers": lambda d: faulty_then_rerun(d, 2),
    # killed while instructions are being verified (no query granted yet) ...
    "kill -9 early, 1 worker": lambda d: interrupted_then_rerun(d, 1, signal.SIGKILL, ANSWERS, 30),
    # ... and once results are stored (the grants were made and are honoured on the rerun)
    "kill -9 late, 2 workers": lambda d: interrupted_then_rerun(d, 2, signal.SIGKILL, RESULTS, 5),
    # Ctrl-C once at about a third of the demo's answers (a clean run stores 132)
    "Ctrl-C, 1 worker": lambda d: interrupted_then_rerun(d, 1, signal.SIGINT, ANSWERS, 45),
}
CLEAN = "clean, 1 worker"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[object, dict[str, list[bytes]]]]:
    """Every scenario side by side, and the reference (a clean run at one sandbox worker):
    {name: (what the scenario returned, its final exports)}."""
    base = tmp_path_factory.mktemp("same-data")
    todo = {CLEAN: lambda d: run_ok(demo(d, 1)), **SCENARIOS}
    dirs = {name: base / f"run{i}" for i, name in enumerate(todo)}
    with ThreadPoolExecutor(len(todo)) as ex:
        futures = {name: ex.submit(fn, dirs[name]) for name, fn in todo.items()}
        done = {name: f.result() for name, f in futures.items()}
    out = {name: (done[name], exports(dirs[name])) for name in todo}
    assert out[CLEAN][1]["sft_trl.jsonl"] and out[CLEAN][1]["dpo_trl.jsonl"]
    return out


def test_same_exports_after_faults_kills_and_other_worker_counts(runs):
    for name in ("server fault, 1 worker", "server fault, 2 workers"):
        assert runs[name][0] in (1, EXIT_LOST), f"{name}: the fault must cost items ({runs[name][0]})"
    for name in ("kill -9 early, 1 worker", "kill -9 late, 2 workers"):
        assert runs[name][0]["rc"] == -signal.SIGKILL and not runs[name][0]["summary"], name
    for name in SCENARIOS:
        assert runs[name][1] == runs[CLEAN][1], name


def test_ctrl_c_once_stops_within_seconds_and_the_rerun_ends_with_the_same_exports(runs):
    interrupted, got = runs["Ctrl-C, 1 worker"]
    assert interrupted["rc"] == EXIT_INTERRUPTED
    assert interrupted["stopped_s"] < 5, interrupted
    assert got == runs[CLEAN][1]
