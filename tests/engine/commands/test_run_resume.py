"""kill -9 in the middle of `autoif run`, then the same command again.

The SGLang simulator runs in its own process (`autoif sim`, the scripted model of
tests/fixtures/autoif_e2e.py, the default latency model so a run takes a few seconds) and
outlives the killed engine, so its request counter covers the uninterrupted run, the killed
run and the resumed run. The engine is the real CLI in a subprocess (`--server` points it at
that simulator), killed with SIGKILL once its state database holds answers.
"""
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.fixtures import autoif_e2e as fx
from tests.engine.commands.test_run_e2e import EXPECTED_FUNNEL, EXPECTED_REQUESTS, JSONL_STEMS, read_jsonl

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MAX_IN_FLIGHT = 8


def _popen(args, **kw):
    # own session: the engine's sandbox workers stay in its process group, which we clean up
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=ENV,
                            start_new_session=True, **kw)


@contextlib.contextmanager
def sim_process(*extra: str):
    """`autoif sim` in its own process (`extra`: more of its flags); yields its URL."""
    proc = _popen(["sim", "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                  text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://\S+", line)
        assert m, f"simulator did not start: {line!r}"
        yield m.group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def sim_url():
    """The simulator answering with the scripted model of tests/fixtures/autoif_e2e.py, at four
    times its H100 pace: a run still lasts seconds, long enough to be killed half way."""
    with sim_process("--responder", "tests.fixtures.autoif_e2e:respond", "--speed", "4") as url:
        yield url


def received(url: str) -> int:
    """Generation requests that reached the simulator's handlers so far."""
    with urllib.request.urlopen(url + "/get_server_info", timeout=10) as resp:
        return json.loads(resp.read())["simulator"]["counters"]["received"]


def settled_received(url: str, quiet_s: float = 0.3, limit_s: float = 5.0) -> int:
    """`received` once it stopped moving for `quiet_s`: requests a killed engine had already
    written to the socket still reach the simulator's handlers a moment after the kill."""
    deadline = time.monotonic() + limit_s
    last = received(url)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = received(url)
        if now == last:
            return now
        last = now
    return last


def cache_keys(run_dir: Path) -> set[str]:
    db = sqlite3.connect(f"file:{run_dir / 'state.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return {k for (k,) in db.execute("SELECT key FROM llm_cache")}
    finally:
        db.close()


def cache_count(run_dir: Path) -> int:
    if not (run_dir / "state.sqlite").exists():
        return 0
    try:
        return len(cache_keys(run_dir))
    except sqlite3.Error:               # created but its tables not there yet
        return 0


def run_cmd(url: str, config: Path, run_dir: Path) -> list[str]:
    return ["run", "--backend", "sim", "--server", url, "--config", str(config),
            "--output-dir", str(run_dir), "--no-progress"]


def run_to_end(url: str, config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    proc = _popen(run_cmd(url, config, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        _reap_group(proc)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that still run (zombies waiting for init do not count)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()   # state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                pids.append(int(entry))
    return pids


def _reap_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Give the engine's process group (sandbox workers, forkserver) time to exit, then kill it."""
    deadline = time.monotonic() + grace_s
    while _live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _live_members(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def export_records(run_dir: Path) -> dict[str, list[bytes]]:
    """Each export file's records, canonical JSON, sorted: equal means same records, any order."""
    out = {}
    for stem in JSONL_STEMS:
        rows = read_jsonl(run_dir / "exports" / f"{stem}.jsonl")
        out[stem] = sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in rows)
    return out


def test_kill_9_then_resume(tmp_path, sim_url):
    # max_inflight_requests does not change the data (not in the config hash); it bounds how
    # many requests a kill can catch in flight.
    settings = {**fx.JOB, "max_inflight_requests": MAX_IN_FLIGHT, **fx.write_inputs(tmp_path / "inputs")}
    config = tmp_path / "job.toml"
    config.write_text(fx.toml(settings))

    # 1. The reference: an uninterrupted run. With the deterministic responder every run of this
    #    job asks the same set of distinct requests; each goes over HTTP exactly once (identical
    #    requests share one call, answers are cached), so the simulator counts exactly
    #    EXPECTED_REQUESTS (hand-counted in test_run_e2e) and the cache holds one entry each.
    ref_dir = tmp_path / "reference"
    before = received(sim_url)
    run_to_end(sim_url, config, ref_dir)
    uninterrupted = received(sim_url) - before
    ref_keys = cache_keys(ref_dir)
    assert uninterrupted == len(ref_keys) == EXPECTED_REQUESTS

    # 2. The same job in another directory, killed with SIGKILL half way through.
    run_dir = tmp_path / "resumed"
    before = received(sim_url)
    proc = _popen(run_cmd(sim_url, config, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while cache_count(run_dir) < EXPECTED_REQUESTS // 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        _reap_group(proc)
    assert proc.returncode == -signal.SIGKILL
    killed_sent = settled_received(sim_url) - before
    answered = cache_keys(run_dir)      # requests the killed run got answers to and stored
    assert 0 < len(answered) < EXPECTED_REQUESTS, "the kill must land mid-run"
    assert answered <= ref_keys         # the killed run asked nothing the reference did not
    assert not (run_dir / "summary.json").exists()
    # what the killed run sent but never stored: the requests in flight at the kill
    in_flight_lost = killed_sent - len(answered)
    assert 0 <= in_flight_lost <= MAX_IN_FLIGHT

    # 3. The same command again, to completion.
    before = received(sim_url)
    result = run_to_end(sim_url, config, run_dir)
    resumed_sent = received(sim_url) - before
    # The accounting. The complete set of distinct requests is ref_keys (U of them). The killed
    # run stored answers for `answered` (A) of them and sent `in_flight_lost` (L) more that it
    # never stored. A resume that re-sends no answered request sends exactly U - A: the L lost
    # ones again plus those never sent. Exact, so one re-sent answered request fails it.
    assert resumed_sent == uninterrupted - len(answered)
    assert cache_keys(run_dir) == ref_keys
    # hence over both runs: the uninterrupted run's count plus the L in-flight requests the kill
    # lost (0 <= L <= MAX_IN_FLIGHT, checked above), each of which was asked twice
    assert killed_sent + resumed_sent == uninterrupted + in_flight_lost

    # Same outputs as the uninterrupted run, as sets of records; no duplicates anywhere.
    ref_exports, got_exports = export_records(ref_dir), export_records(run_dir)
    assert got_exports == ref_exports
    for stem, rows in got_exports.items():
        assert rows, stem
        assert len(rows) == len(set(rows)), f"duplicate records in {stem}"
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["stopped"] == "completed"
    assert summary["funnel"] == EXPECTED_FUNNEL
    assert "scoring" in result.stderr                      # the funnel table was printed

    def stored(d: Path, stage: str) -> list[str]:
        db = sqlite3.connect(d / "state.sqlite")
        try:
            return sorted(i for (i,) in db.execute("SELECT id FROM records WHERE stage = ?", (stage,)))
        finally:
            db.close()

    for stage in ("backtranslate", "final"):
        assert stored(run_dir, stage) == stored(ref_dir, stage), stage
