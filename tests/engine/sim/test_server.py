"""The SGLang simulator on its own: batching latency model, responders, outages, CLI."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from engine.sim import (FaultConfig, LatencyModel, RandomResponder, ScriptedResponder, SimConfig,
                        SimServer, echo, load_responder)
from engine.sim.tokens import count_tokens, split_tokens

ROOT = Path(__file__).resolve().parents[3]


async def post(session: aiohttp.ClientSession, url: str, body: dict):
    async with session.post(url, data=orjson.dumps(body)) as r:
        return r.status, orjson.loads(await r.read())


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


async def timed_batch(max_running: int, count: int = 6, tokens: int = 10) -> float:
    lat = LatencyModel(max_running=max_running, decode_base_ms=10.0, decode_per_req_ms=0.0,
                       prefill_tps=1e9)
    async with SimServer(SimConfig(latency=lat)) as sim:
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            await asyncio.gather(*(post(s, sim.url + "/generate",
                                        {"text": words(tokens, f"r{i}x"),
                                         "sampling_params": {"max_new_tokens": tokens}})
                                   for i in range(count)))
            return time.monotonic() - t0


async def test_queue_beyond_max_running_costs_waves():
    # the best of 3: load on a shared machine only adds time, and it inflated one short
    # batch to nearly 3x its steps in CI-like runs
    wide = min([await timed_batch(max_running=6) for _ in range(3)])     # one wave of 10 steps
    narrow = min([await timed_batch(max_running=2) for _ in range(3)])   # three waves of 10 steps
    assert wide >= 0.09 and narrow >= 0.28
    assert narrow > 1.8 * wide


async def test_metrics_show_running_and_queued():
    lat = LatencyModel(max_running=3, decode_base_ms=10.0)
    async with SimServer(SimConfig(latency=lat)) as sim:
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(post(s, sim.url + "/generate",
                                              {"text": words(30, f"q{i}_")}))
                     for i in range(8)]
            await asyncio.sleep(0.1)
            async with s.get(sim.url + "/metrics") as r:
                text = await r.text()
            await asyncio.gather(*tasks)
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    assert values["sglang:num_running_reqs"] == 3.0
    assert values["sglang:num_queue_reqs"] == 5.0


def test_step_time_grows_with_batch():
    lat = LatencyModel()
    assert lat.step_seconds(1, 0) == pytest.approx(0.015, rel=0.01)
    assert lat.step_seconds(256, 0) == pytest.approx(0.035, rel=0.01)
    assert lat.step_seconds(1, 20_000) == pytest.approx(1.015, rel=0.01)   # prefill 20k tok/s
    assert LatencyModel(speed=10).step_seconds(1, 0) == pytest.approx(0.0015, rel=0.01)


async def test_prefill_and_cache_shape_time_to_first_token():
    lat = LatencyModel(prefill_tps=2000.0, decode_base_ms=1.0)
    prompt = words(400)                                  # 0.2 s of prefill when uncached
    async with SimServer(SimConfig(latency=lat)) as sim:
        async with aiohttp.ClientSession() as s:
            body = {"text": prompt, "sampling_params": {"max_new_tokens": 1}}
            t0 = time.monotonic()
            _, cold = await post(s, sim.url + "/generate", body)
            t1 = time.monotonic()
            _, warm = await post(s, sim.url + "/generate", body)
            t2 = time.monotonic()
    assert cold["meta_info"]["cached_tokens"] == 0 and warm["meta_info"]["cached_tokens"] == 400
    assert t1 - t0 >= 0.2 and t2 - t1 < 0.15


async def test_zero_latency_mode_is_immediate():
    async with SimServer(SimConfig(latency=LatencyModel(zero_latency=True))) as sim:
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            results = await asyncio.gather(*(post(s, sim.url + "/generate",
                                                  {"text": words(200), "sampling_params": {"n": 2}})
                                             for _ in range(50)))
            assert time.monotonic() - t0 < 2.0
    assert all(status == 200 and len(out) == 2 for status, out in results)


def test_tokens_roundtrip():
    for text in ["", "a", "  lead and trail  ", "one\ntwo  three\t", "x" * 10]:
        assert "".join(split_tokens(text)) == text
    assert count_tokens("one two  three") == 3 == len(split_tokens("one two  three"))


def test_responders(tmp_path):
    assert echo("hello", {}, 0) == "hello"
    assert echo([{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}], {}, 0) == "u1"
    r = RandomResponder(seed=5)
    assert r("p", {}, 0) == r("p", {}, 0) != r("p", {}, 1)
    assert RandomResponder(seed=6)("p", {}, 0) != r("p", {}, 0)

    fixture = tmp_path / "answers.jsonl"
    fixture.write_text(
        '{"match": "evaluation function", "responses": ["def evaluate(r):\\n    return True", '
        '"import os; os.system(\\"rm -rf /\\")", "def evaluate(r) return"]}\n'
        '# comments and blank lines are skipped\n\n'
        '{"match": "(?i)verify", "responses": ["yes"]}\n')
    scripted = load_responder(str(fixture))
    assert isinstance(scripted, ScriptedResponder)
    got = [scripted("write an evaluation function", {}, i) for i in range(4)]
    assert got[0].startswith("def evaluate") and "rm -rf" in got[1] and got[3] == got[0]
    assert scripted("Please VERIFY this", {}, 0) == "yes"
    assert scripted("unmatched", {}, 0) == "unmatched"             # echo fallback
    assert load_responder("echo") is echo
    autoif = load_responder("autoif")
    verifier_prompt = "You write a Python checker for a constraint on an AI assistant's reply"
    answers = [autoif(verifier_prompt, {}, i) for i in range(10)]
    assert any("os.system" in a for a in answers) and any("while True" in a for a in answers)
    assert autoif("You are grading an AI assistant's reply ...", {}, 0).endswith("Score: 9")
    assert load_responder("random:9")("x", {}, 0) == RandomResponder(seed=9)("x", {}, 0)
    assert load_responder("engine.sim.responders:echo") is echo
    with pytest.raises(ValueError):
        load_responder("nonsense")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"match": "(", "responses": ["x"]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_responder(str(bad))


async def test_callable_responder_sees_params_and_index():
    seen = []

    def responder(prompt, sampling_params, index):
        seen.append((prompt, sampling_params.get("json_schema"), index))
        return '{"answer": %d}' % index

    async with SimServer(SimConfig(responder=responder, latency=LatencyModel(speed=50))) as sim:
        async with aiohttp.ClientSession() as s:
            _, out = await post(s, sim.url + "/generate",
                                {"text": "q", "sampling_params": {"n": 3, "json_schema": "{}"}})
    assert [o["text"] for o in out] == ['{"answer": 0}', '{"answer": 1}', '{"answer": 2}']
    assert sorted(i for _, _, i in seen) == [0, 1, 2] and all(js == "{}" for _, js, _ in seen)


async def test_outage_refuses_then_recovers():
    async with SimServer(SimConfig(latency=LatencyModel(speed=50))) as sim:
        async with aiohttp.ClientSession() as s:
            assert (await post(s, sim.url + "/generate", {"text": "a"}))[0] == 200
            await sim.outage(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(s, sim.url + "/generate", {"text": "a"})
            await asyncio.sleep(0.5)
            assert (await post(s, sim.url + "/generate", {"text": "a"}))[0] == 200


async def test_fault_draws_are_seeded():
    async def pattern(seed: int) -> list[int]:
        cfg = SimConfig(latency=LatencyModel(zero_latency=True),
                        faults=FaultConfig(fail_rate=0.5, seed=seed))
        async with SimServer(cfg) as sim:
            async with aiohttp.ClientSession() as s:
                return [(await post(s, sim.url + "/generate", {"text": "a"}))[0] for _ in range(20)]

    a, b, c = await pattern(1), await pattern(1), await pattern(2)
    assert a == b != c and set(a) == {200, 503}


def test_cli_runs_in_foreground_and_prints_url():
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "sim", "--port", "0", "--host", "127.0.0.1",
         "--zero-latency", "--responder", "random:1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert "SGLang simulator (test double) listening on http://127.0.0.1:" in line
        url = line.strip().rsplit(" ", 1)[1]

        async def query():
            async with aiohttp.ClientSession() as s:
                return await post(s, url + "/generate", {"text": "hi"})

        status, out = asyncio.run(query())
        assert status == 200 and out["text"] == RandomResponder(seed=1)("hi", {}, 0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
