"""`autoif run --metrics-port P`: Prometheus text over HTTP during a real run (the SGLang simulator
over HTTP, the real sandbox pool), parsed with prometheus-client's own parser, and checked
against what the run itself reports at the end."""
from __future__ import annotations

import asyncio
import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.job import run_job
from engine.config import Config
from engine.sim.config import LatencyModel, SimConfig
from engine.sim.server import SimServer
from tests.conftest import free_port
from tests.fixtures import autoif_e2e as fx

pytestmark = pytest.mark.timeout(120)


def parse(text: str) -> dict[str, list]:
    """family name -> [(sample name, labels, value)]"""
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(text)}


def value(fams: dict, family: str, sample: str | None = None, **labels) -> float:
    for name, lab, v in fams.get(family, []):
        if (sample is None or name == sample) and all(lab.get(k) == x for k, x in labels.items()):
            return v
    raise KeyError((family, sample, labels))


async def scrape_until(url: str, task: asyncio.Task, every: float = 0.1) -> list[tuple[str, dict]]:
    scrapes = []
    async with aiohttp.ClientSession() as http:
        while not task.done():
            try:
                async with http.get(url) as resp:
                    text = await resp.text()
                    scrapes.append((resp.headers.get("Content-Type", ""), parse(text)))
            except aiohttp.ClientConnectionError:
                pass                           # not serving yet, or already closed
            await asyncio.sleep(every)
    return scrapes


async def test_metrics_served_during_a_run(tmp_path):
    port = free_port()
    # latency on: the run lasts a few seconds, long enough for rates to be sampled and scraped
    async with SimServer(SimConfig(responder="tests.fixtures.autoif_e2e:respond",
                                   latency=LatencyModel(speed=1.0))) as sim:
        cfg = Config.from_flat({**fx.JOB, **fx.write_inputs(tmp_path / "in"), "servers": [sim.url],
                        "output_dir": str(tmp_path / "run")})
        task = asyncio.create_task(run_job(cfg, metrics_port=port, progress=False))
        scrapes = await scrape_until(f"http://127.0.0.1:{port}/metrics", task)
        summary = await task
    assert summary["stopped"] == "completed"
    assert len(scrapes) >= 5, len(scrapes)
    ctype, last = scrapes[-1]
    assert ctype.startswith("text/plain")

    # everything the issue lists is exposed, as prometheus-client families
    for family in ("autoif_llm_requests_in_flight", "autoif_llm_tokens_per_second",
                   "autoif_llm_completion_tokens", "autoif_llm_requests_per_second",
                   "autoif_pool_busy_fraction", "autoif_pool_checks_per_second", "autoif_pool_checks",
                   "autoif_queue_depth", "autoif_stage_items", "autoif_funnel_items",
                   "autoif_funnel_dropped", "autoif_stage_seconds"):
        assert family in last, family
    stages = [s for s in summary["funnel"] if "." not in s]
    assert {lab["stage"] for _, lab, _ in last["autoif_queue_depth"]} == set(stages)

    # the live values moved while the run went on
    assert max(value(f, "autoif_llm_requests_in_flight") for _, f in scrapes) > 0
    assert max(value(f, "autoif_llm_tokens_per_second") for _, f in scrapes) > 0
    assert max(value(f, "autoif_pool_checks_per_second") for _, f in scrapes) > 0
    assert max(value(f, "autoif_pool_busy_fraction") for _, f in scrapes) > 0
    assert all(0 <= value(f, "autoif_pool_busy_fraction") <= 1 for _, f in scrapes)
    tokens = [value(f, "autoif_llm_completion_tokens", "autoif_llm_completion_tokens_total")
              for _, f in scrapes]
    assert tokens == sorted(tokens) and tokens[-1] > 0
    assert tokens[-1] <= summary["client"]["completion_tokens"]

    # counts never exceed what the run ends with, and per-stage kept/dropped add up to them
    for stage, row in summary["funnel"].items():
        for kind in ("in", "kept", "out"):
            seen = [value(f, "autoif_funnel_items", stage=stage, kind=kind)
                    for _, f in scrapes if any(lab.get("stage") == stage
                                               for _, lab, _ in f["autoif_funnel_items"])]
            assert seen == sorted(seen) and (not seen or seen[-1] <= row[kind]), (stage, kind)
        for reason, n in row["dropped"].items():
            seen = [v for _, f in scrapes for _, lab, v in f["autoif_funnel_dropped"]
                    if lab == {"stage": stage, "reason": reason}]
            assert not seen or max(seen) <= n
    for stage in stages:
        kept = [value(f, "autoif_stage_items", "autoif_stage_items_total", stage=stage, outcome="kept")
                for _, f in scrapes if any(lab.get("stage") == stage and lab.get("outcome") == "kept"
                                           for _, lab, _ in f["autoif_stage_items"])]
        assert not kept or kept[-1] <= summary["funnel"][stage]["kept"]
    # some scrape saw drops counted by reason (the fixture drops at every stage)
    assert any(f["autoif_funnel_dropped"] for _, f in scrapes)


async def test_metrics_follow_prometheus_conventions_and_outlive_the_run(tmp_path):
    """Counters for counts, histograms for latencies and pass rates, labels (not names) per stage
    and server, retries and errors by server and kind; the final values stay up for
    --metrics-keep seconds after the run, on the --metrics-host address."""
    from engine.sim.config import FaultConfig

    port = free_port()
    async with SimServer(SimConfig(responder="tests.fixtures.autoif_e2e:respond",
                                   latency=LatencyModel(zero_latency=True),
                                   faults=FaultConfig(fail_rate=0.3, seed=5))) as sim:
        cfg = Config.from_flat({**fx.JOB, **fx.write_inputs(tmp_path / "in"), "servers": [sim.url],
                        "output_dir": str(tmp_path / "run"), "max_retries": 8})
        task = asyncio.create_task(run_job(cfg, metrics_port=port, metrics_host="0.0.0.0",
                                           metrics_keep_s=30, progress=False))
        summary_path = tmp_path / "run" / "summary.json"
        while not summary_path.exists() and not task.done():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)                             # the run is over; metrics still served
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        assert not task.done()
        task.cancel()                                        # stop lingering
        with pytest.raises(asyncio.CancelledError):
            await task
    import orjson
    summary = orjson.loads(summary_path.read_bytes())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    fams = parse(text)
    types = {name: f.type for name, f in families.items()}
    for name in ("autoif_llm_requests", "autoif_llm_completion_tokens", "autoif_pool_checks",
                 "autoif_funnel_items", "autoif_funnel_dropped", "autoif_stage_items",
                 "autoif_llm_retries", "autoif_llm_attempt_errors", "autoif_llm_request_failures"):
        assert types[name] == "counter", name
    for name in ("autoif_llm_request_seconds", "autoif_stage_seconds", "autoif_response_pass_rate",
                 "autoif_response_score"):
        assert types[name] == "histogram", name
    assert not [n for n in families if n.startswith("autoif_queue_depth_")]   # one labelled family
    # the final values are the run's own
    for stage, row in summary["funnel"].items():
        for kind in ("in", "kept", "out"):
            assert value(fams, "autoif_funnel_items", stage=stage, kind=kind) == row[kind]
    client = summary["client"]
    assert client["retries"] > 0 and client["failed"] == 0
    assert sum(v for _, _, v in fams["autoif_llm_retries"]) == client["retries"]
    assert {(lab["server"], lab["kind"]): v for _, lab, v in fams["autoif_llm_attempt_errors"]} == \
        {(sim.url, kind): n for kind, n in client["attempt_errors"].items()}
    assert value(fams, "autoif_llm_request_seconds", "autoif_llm_request_seconds_count") == client["requests"]
    dist = summary["distributions"]
    assert value(fams, "autoif_response_pass_rate", "autoif_response_pass_rate_count") == \
        sum(dist["pass_rate"]["counts"]) == summary["funnel"]["responses.sample"]["in"]
    assert value(fams, "autoif_response_pass_rate", "autoif_response_pass_rate_bucket", le="0.5") == \
        sum(dist["pass_rate"]["counts"][:6])                 # le buckets: 0, .1, ... .5 inclusive
    assert value(fams, "autoif_response_score", "autoif_response_score_sum") == dist["score"]["sum"] > 0
