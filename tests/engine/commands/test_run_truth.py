"""`autoif run` tells the truth: its exit status and last lines match what happened.

The SGLang simulator (a test double of the server) runs in its own process with the scripted
model of tests/fixtures/autoif_e2e.py, healthy, flaky (503s, cut connections, broken streams)
or killed mid-run. Whatever happens, a run ends either with the exports of a clean run or
with a non-zero exit that says how many items were lost and where; the same command against
a healthy server then completes the job exactly.
"""
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.outcome import EXIT_FAILED, EXIT_LOST, EXIT_OK, EXIT_USAGE
from tests.fixtures import autoif_e2e as fx
from tests.engine.commands.test_run_resume import _popen, _reap_group, cache_count, export_records

ROOT = Path(__file__).resolve().parents[3]
FLAKY = ["--fail-rate", "0.35", "--drop-rate", "0.15", "--stream-error-rate", "0.1"]


@contextlib.contextmanager
def simulator(*flags: str):
    """`autoif sim` in its own process (faults as flags); yields (process, URL)."""
    proc = _popen(["sim", "--port", "0", "--responder", "tests.fixtures.autoif_e2e:respond", *flags],
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        m = re.search(r"http://\S+", proc.stdout.readline())
        assert m, "simulator did not start"
        yield proc, m.group(0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Seed and query files, shared: their paths are settings that shape the data (config hash)."""
    return fx.write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def config(tmp_path, inputs) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(fx.toml({**fx.JOB, "max_inflight_requests": 8, **inputs}))
    return path


def run(url: str, config: Path, run_dir: Path, *extra: str, **popen) -> subprocess.CompletedProcess:
    proc = _popen(["run", "--server", url, "--config", str(config), "--output-dir", str(run_dir),
                   "--no-progress", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True, **popen)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        _reap_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lost_in_summary(run_dir: Path) -> int:
    funnel = orjson.loads((run_dir / "summary.json").read_bytes())["funnel"]
    return sum(n for stage, row in funnel.items() if "." not in stage
               for reason, n in row["dropped"].items() if reason.startswith("error:"))


def check_lost(proc: subprocess.CompletedProcess, run_dir: Path) -> None:
    """Exit 3 and last lines that say how many were lost, where, and that a rerun retries them."""
    assert proc.returncode == EXIT_LOST, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-2:]
    m = re.match(r"autoif run: (\d+) item\(s\) lost to errors \((\w+): ", last[0])
    assert m, last
    assert int(m.group(1)) == lost_in_summary(run_dir) > 0
    assert "run the same command again to retry exactly those" in last[1]
    assert "Traceback" not in proc.stderr


def check_exact_or_lost(proc: subprocess.CompletedProcess, run_dir: Path, clean: dict) -> None:
    if proc.returncode == EXIT_OK:
        assert export_records(run_dir) == clean
    else:
        check_lost(proc, run_dir)


@pytest.fixture(scope="module")
def clean_exports(tmp_path_factory, inputs) -> dict:
    """The exports of an uninterrupted run against a healthy simulator."""
    tmp = tmp_path_factory.mktemp("clean")
    path = tmp / "job.toml"
    path.write_text(fx.toml({**fx.JOB, **inputs}))
    with simulator("--zero-latency") as (_, url):
        proc = run(url, path, tmp / "run")
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert "lost" not in proc.stderr
    # no --model given: provenance names the model the simulator reports (`autoif sim --model`)
    assert orjson.loads((tmp / "run" / "summary.json").read_bytes())["model"] == "sim-model"
    records = export_records(tmp / "run")
    assert {orjson.loads(r)["provenance"]["model"] for stem, rows in records.items()
            if stem != "verifiers" for r in rows} == {"sim-model"}
    return records


def test_flaky_server_ends_exact_or_nonzero_and_a_rerun_completes(tmp_path, config, clean_exports):
    run_dir, patient = tmp_path / "run", tmp_path / "patient"
    with simulator("--zero-latency", "--seed", "3", *FLAKY) as (_, url):
        # no retries: with a third of requests failing, some of the ~40 surely do
        check_lost(run(url, config, run_dir, "--max-retries", "0"), run_dir)
        # a few retries: either every item made it (exports exact) or the run says what did not
        check_exact_or_lost(run(url, config, patient, "--max-retries", "2"), patient, clean_exports)
    with simulator("--zero-latency") as (_, url):
        for d in (run_dir, patient):
            again = run(url, config, d)
            assert again.returncode == EXIT_OK, again.stderr[-3000:]
            assert "lost" not in again.stderr
            assert export_records(d) == clean_exports


def test_server_killed_mid_run_then_rerun_completes(tmp_path, config, clean_exports):
    run_dir = tmp_path / "run"
    with simulator() as (sim, url):            # the default latency model: the run takes seconds
        proc = _popen(["run", "--server", url, "--config", str(config), "--output-dir", str(run_dir),
                       "--no-progress", "--max-retries", "1"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while cache_count(run_dir) < 8 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            sim.kill()                              # the server is gone mid-run
            out, err = proc.communicate(timeout=120)
        finally:
            _reap_group(proc)
    check_exact_or_lost(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run_dir,
                        clean_exports)
    assert proc.returncode == EXIT_LOST        # it was killed with answers still to come
    with simulator("--zero-latency") as (_, url):
        again = run(url, config, run_dir)
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    assert export_records(run_dir) == clean_exports


# -- refused before any work: one line, exit 2, nothing written ------------------------------

def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_USAGE, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("autoif run: "), lines
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


NOBODY = "http://127.0.0.1:9"       # never asked: these runs stop before any server is used


def test_missing_queries_file_is_refused(tmp_path, config):
    proc = run(NOBODY, config, tmp_path / "run", "--queries-path", str(tmp_path / "nope.jsonl"))
    refused(proc, "queries", "nope.jsonl", "No such file")
    assert not (tmp_path / "run").exists()


def test_all_bad_queries_are_refused_and_a_few_are_skipped(tmp_path, config):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(f"{{not json {i}\n" for i in range(21)))
    refused(run(NOBODY, config, tmp_path / "run", "--queries-path", str(bad)), "21 of 21 lines are bad")
    assert not (tmp_path / "run").exists()
    # one bad line in twenty: skipped with a warning (the run then goes on to the server)
    from engine.config import Config
    from engine.run import load_inputs
    some = tmp_path / "some.jsonl"
    some.write_text("".join(f'{{"query": "q{i}"}}\n' for i in range(19)) + "{oops\n")
    _, queries = load_inputs(Config.from_flat(queries_path=str(some)))
    assert len(queries) == 19


def test_output_dir_that_is_a_file_is_refused(tmp_path, config):
    target = tmp_path / "taken"
    target.write_text("mine\n")
    refused(run(NOBODY, config, target), "is a file")
    assert target.read_text() == "mine\n"


def test_read_only_output_dir_is_refused_and_kept(tmp_path, config):
    run_dir = tmp_path / "run"
    (run_dir / "exports").mkdir(parents=True)
    (run_dir / "exports" / "sft_alpaca.jsonl").write_text('{"kept": true}\n')
    for d in (run_dir / "exports", run_dir):
        d.chmod(0o555)
    # root writes anywhere: then the engine runs without the capability that lets it
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    try:
        proc = subprocess.run([*prefix, sys.executable, "-m", "engine.cli", "run", "--server", NOBODY,
                               "--config", str(config), "--output-dir", str(run_dir), "--no-progress"],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=60)
        refused(proc, "cannot be written")
    finally:
        for d in (run_dir, run_dir / "exports"):
            d.chmod(0o755)
    assert (run_dir / "exports" / "sft_alpaca.jsonl").read_text() == '{"kept": true}\n'
    assert sorted(p.name for p in run_dir.rglob("*")) == ["exports", "sft_alpaca.jsonl"]


def _small_disk() -> None:
    """In the engine's process: files cannot grow past 96 KiB (what a full disk looks like to
    a writer: the write fails, EFBIG here, ENOSPC there), no signal for it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, resource.RLIM_INFINITY))


def test_disk_full_mid_run_is_one_line_and_a_rerun_completes(tmp_path, config, clean_exports):
    run_dir = tmp_path / "run"
    with simulator("--zero-latency") as (_, url):
        full = run(url, config, run_dir, preexec_fn=_small_disk)
        assert full.returncode == EXIT_FAILED, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("autoif run: ") and "cannot write to" in last, last
        assert "free space and run the same command again" in last
        assert "Traceback" not in full.stderr
        exports = run_dir / "exports"
        assert not exports.exists() or all(p.stat().st_size > 0 for p in exports.iterdir())
        again = run(url, config, run_dir)
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    assert export_records(run_dir) == clean_exports
