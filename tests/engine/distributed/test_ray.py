"""`autoif run --ray`: sharded runs on a real local Ray cluster (2 CPUs), the SGLang simulator over
HTTP as the server, real sandbox pools in the shard actors, and the scripted AutoIF model of
tests/fixtures/autoif_e2e.py.

What must hold, each checked against a single-process `run_job` of the same inputs (not against
numbers written here):
- a 2-shard run makes the same records and the same export rows (same multiset: nothing lost,
  nothing twice) and the same funnel;
- an actor killed mid-run (SIGKILL of its process) is replaced; its shard resumes from its own
  SQLite file: the new actor sends exactly the requests that were not answered yet;
- a driver killed mid-run and started again finishes the job the same way, re-sending nothing
  that was answered.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from engine.job import run_job  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.distributed.driver import Driver, RayOptions  # noqa: E402
from engine.distributed.sharding import partition, shard_dir, shard_of  # noqa: E402
from engine.records import QueryResult, VerifiedInstruction  # noqa: E402
from engine.sim.config import LatencyModel, SimConfig  # noqa: E402
from engine.sim.server import SimServer  # noqa: E402
from engine.state import StateStore  # noqa: E402
from tests.conftest import alive, free_port  # noqa: E402
from tests.fixtures import autoif_e2e as fx  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
RESPONDER = "tests.fixtures.autoif_e2e:respond"
pytestmark = pytest.mark.timeout(240)


# -- helpers ----------------------------------------------------------------------------------

def job_config(inputs: dict, run_dir: Path, servers: list[str]) -> Config:
    return Config.from_flat({**fx.JOB, **inputs, "servers": servers, "output_dir": str(run_dir)})


def export_rows(run_dir: Path) -> dict[str, list[bytes]]:
    """Every export file's rows, canonical and sorted (a multiset: duplicates would show)."""
    out = {}
    for f in sorted((run_dir / "exports").glob("*.jsonl")):
        out[f.name] = sorted(orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS)
                             for line in f.read_bytes().splitlines() if line.strip())
    return out


def record_ids(db: Path) -> tuple[set[str], set[str]]:
    store = StateStore(db)
    try:
        return ({r.id for r in store.iter_records(QueryResult, "final")},
                {v.id for v in store.iter_records(VerifiedInstruction, "backtranslate")})
    finally:
        store.close()


def cache_size(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0]
    except sqlite3.OperationalError:            # created, schema not written yet
        return 0
    finally:
        con.close()


def worker_pid(db: Path) -> int | None:
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'worker'").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return orjson.loads(row[0])["pid"] if row else None


def all_dbs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "shards").glob("*/state.sqlite"))


def wait_dead(pid: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < end, f"process {pid} still alive"
        time.sleep(0.05)


async def scrape(url: str, task: asyncio.Task) -> list[str]:
    import aiohttp
    texts = []
    async with aiohttp.ClientSession() as http:
        while not task.done():
            try:
                async with http.get(url) as resp:
                    texts.append(await resp.text())
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    return texts


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs, as on the CI machine; its GCS address for CLI drivers."""
    info = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                    log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    try:
        yield info.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run of the same inputs: what every sharded run must reproduce."""
    base = tmp_path_factory.mktemp("ray")
    inputs = fx.write_inputs(base / "inputs")

    async def go():
        async with SimServer(SimConfig(responder=RESPONDER,
                                       latency=LatencyModel(zero_latency=True))) as sim:
            cfg = job_config(inputs, base / "single", [sim.url])
            summary = await run_job(cfg, progress=False)
            return summary, sim.counters.received

    summary, requests = asyncio.run(go())
    assert summary["stopped"] == "completed"
    rows = export_rows(base / "single")
    assert any(rows.values())                    # the fixture makes SFT and DPO data
    return {"base": base, "inputs": inputs, "funnel": summary["funnel"], "rows": rows,
            "ids": record_ids(base / "single" / "state.sqlite"), "requests": requests,
            "sink_items": summary["sink_items"]}


def assert_same_as_reference(run_dir: Path, summary: dict, ref: dict) -> None:
    assert summary["stopped"] == "completed"
    assert summary["funnel"] == ref["funnel"]
    assert summary["sink_items"] == ref["sink_items"]
    assert export_rows(run_dir) == ref["rows"]
    assert record_ids(run_dir / "state.sqlite") == ref["ids"]
    on_disk = orjson.loads((run_dir / "summary.json").read_bytes())
    assert on_disk["funnel"] == ref["funnel"]


# -- tests ------------------------------------------------------------------------------------

async def test_two_shards_same_records_as_single_process(cluster, reference, tmp_path):
    async with SimServer(SimConfig(responder=RESPONDER, latency=LatencyModel(zero_latency=True))) as sim:
        cfg = job_config(reference["inputs"], tmp_path / "sharded", [sim.url])
        driver = Driver(cfg, RayOptions(shards=2), progress=False)
        summary = await driver.run()
        run_dir = tmp_path / "sharded"
        assert_same_as_reference(run_dir, summary, reference)
        # each distinct request went to the server once, as in the single-process run
        assert sim.counters.received == reference["requests"]
        assert summary["ray"]["restarts"] == {}

        # the shards split the instructions by id, each shard kept its own state file
        augment = StateStore(run_dir / "shards" / "augment" / "state.sqlite")
        try:
            from engine.records import Instruction
            instructions = list(augment.iter_records(Instruction, "augment"))
        finally:
            augment.close()
        parts = partition(instructions, 2)
        assert summary["ray"]["instructions_per_shard"] == [len(p) for p in parts]
        for i in range(2):
            db = shard_dir(run_dir, i, 2) / "state.sqlite"
            store = StateStore(db)
            try:
                assert all(shard_of(v.instruction.id, 2) == i
                           for v in store.iter_records(VerifiedInstruction, "backtranslate"))
                assert all(shard_of(r.task.instruction.instruction.id, 2) == i
                           for r in store.iter_records(QueryResult, "final"))
            finally:
                store.close()
            results, verified = record_ids(db)
            assert results <= reference["ids"][0] and verified <= reference["ids"][1]
        # the run's time series and distributions are there for `autoif report`
        assert summary["timeseries"] and "tok_s" in summary["timeseries"][-1]
        assert sum(summary["distributions"]["pass_rate"]["counts"]) == \
            reference["funnel"]["responses.sample"]["in"]

        # `autoif report` draws a sharded run like any other
        from engine.report.html import make_report
        made = make_report(run_dir)
        assert made["html"].exists() and len(made["pngs"]) == 5
        assert all(p.stat().st_size > 1000 for p in made["pngs"].values())

        # the same command again: every shard replays its stored records, the server gets nothing
        again = await Driver(cfg, RayOptions(shards=2), progress=False).run()
        assert_same_as_reference(run_dir, again, reference)
        assert sim.counters.received == reference["requests"]
        # another shard count would orphan the shards' caches: refused
        from engine.job import JobError
        with pytest.raises(JobError, match="--shards 2"):
            await Driver(cfg, RayOptions(shards=3), progress=False).run()


async def test_killed_actor_is_replaced_and_resumes(cluster, reference, tmp_path):
    # with latency, verifier answers take ~1 s: time to kill shard 0 in the middle of its work
    async with SimServer(SimConfig(responder=RESPONDER, latency=LatencyModel(speed=4.0))) as sim:
        cfg = job_config(reference["inputs"], tmp_path / "killed", [sim.url])
        run_dir = tmp_path / "killed"
        port = free_port()
        driver = Driver(cfg, RayOptions(shards=2), progress=False, metrics_port=port)
        task = asyncio.create_task(driver.run())
        scraper = asyncio.create_task(scrape(f"http://127.0.0.1:{port}/metrics", task))
        end = time.monotonic() + 60
        while not driver.sizes:                  # augment done, instructions split
            assert not task.done(), task.exception() if task.done() else None
            assert time.monotonic() < end, "augment never finished"
            await asyncio.sleep(0.02)
        k = max(range(2), key=lambda i: driver.sizes[i])      # the shard with the most work
        db = shard_dir(run_dir, k, 2) / "state.sqlite"
        while cache_size(db) < 2:                # shard k has answers cached, more to come
            assert not task.done(), "the run ended before shard k could be killed"
            assert time.monotonic() < end, "shard k never got going"
            await asyncio.sleep(0.02)
        assert k not in driver.done
        pid = await driver.actors[k].pid.remote()
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(wait_dead, pid)
        answered_before = cache_size(db)         # the dead process writes nothing more

        summary = await asyncio.wait_for(task, 180)
        scrapes = await scraper
        assert summary["ray"]["restarts"] == {k: 1}
        # the driver served the cluster's metrics while the shards ran (merged from their ticks)
        assert scrapes, "no metrics scraped"
        seen = "".join(scrapes)
        for family in ("autoif_llm_requests_in_flight", "autoif_llm_tokens_per_second",
                       "autoif_pool_busy_fraction", "autoif_queue_depth", "autoif_funnel_items",
                       "autoif_funnel_dropped"):
            assert family in seen, family
        assert 'autoif_funnel_items_total{kind="in",stage="verifiers"}' in seen   # a counter
        assert_same_as_reference(run_dir, summary, reference)
        # the new actor sent exactly the requests shard k had no answer for: every answered
        # one came from its state file, none went to the server twice
        shard = summary["shards"][k]
        assert shard["replayed"] is False and shard["node"]["pid"] != pid
        assert shard["client"]["requests"] == cache_size(db) - answered_before
        assert shard["client"]["requests"] < cache_size(db)


def test_cli_killed_driver_rerun_resumes(cluster, reference, tmp_path):
    """`autoif run --ray ADDRESS` as a user runs it; SIGKILL the driver mid-run, run it again."""
    async def serve(sim_ready, stop):
        async with SimServer(SimConfig(responder=RESPONDER, latency=LatencyModel(speed=4.0))) as sim:
            sim_ready.append(sim)
            while not stop:
                await asyncio.sleep(0.05)

    import threading
    holder: list = []
    stop: list = []
    thread = threading.Thread(target=lambda: asyncio.run(serve(holder, stop)), daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not holder:
        assert time.monotonic() < end
        time.sleep(0.05)
    sim = holder[0]
    run_dir = tmp_path / "cli"
    config = tmp_path / "job.toml"
    config.write_text(fx.toml({**fx.JOB, **reference["inputs"]}))
    cmd = [sys.executable, "-m", "engine.cli", "run", "--ray", cluster, "--shards", "2",
           "--config", str(config), "--server", sim.url, "--output-dir", str(run_dir), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        end = time.monotonic() + 90
        while sum(cache_size(db) for db in all_dbs(run_dir)) < 8 or \
                not (shard_dir(run_dir, 1, 2) / "state.sqlite").exists():
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < end, "the sharded run never got going"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        # Ray ends a dead driver's actors; wait for them, then nothing changes any more
        for db in all_dbs(run_dir):
            pid = worker_pid(db)
            if pid:
                wait_dead(pid)
        assert not (run_dir / "summary.json").exists()
        received_at_kill = sim.counters.received
        answered_at_kill = sum(cache_size(db) for db in all_dbs(run_dir))

        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
        summary = orjson.loads((run_dir / "summary.json").read_bytes())
        assert_same_as_reference(run_dir, summary, reference)
        # the rerun sent only requests with no stored answer: each one added one new answer
        sent_by_rerun = sim.counters.received - received_at_kill
        assert sent_by_rerun == sum(cache_size(db) for db in all_dbs(run_dir)) - answered_at_kill
        assert sent_by_rerun < reference["requests"]
    finally:
        stop.append(True)
        thread.join(30)


def test_cli_node_serve_starts_one_server_per_node(cluster, reference, tmp_path):
    """`--node-serve sim`: `autoif serve` started once on the (one) node, used by both shards,
    stopped at the end; the records are the single-process run's."""
    run_dir = tmp_path / "node-serve"
    config = tmp_path / "job.toml"
    config.write_text(fx.toml({**fx.JOB, **reference["inputs"]}))
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--ray", cluster, "--shards", "2",
         "--config", str(config), "--node-serve", "sim",
         "--node-serve-args", f"--responder {RESPONDER} --zero-latency",
         "--output-dir", str(run_dir), "--no-progress"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert_same_as_reference(run_dir, summary, reference)
    used = set(re.findall(r"shard on \S+ uses (http://\S+)", proc.stderr))
    assert len(used) == 1                          # one node, one server, both shards on it
    logs = list((run_dir / "servers").glob("*/serve.stderr"))
    assert len(logs) == 1 and "stopped" in logs[0].read_text()
