"""LLMClient against the SGLang simulator with injected faults, over real HTTP on 127.0.0.1.

Every test checks the accounting invariant: each logical request ends in exactly one
result or one counted RequestFailed, and the client's numbers agree with what the
simulator itself saw.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from engine.client import BadRequest, ConnectFailed, LLMClient, RequestFailed, RetryPolicy, Timeouts
from engine.errors import AutoIFError
from engine.llm import SamplingParams
from engine.sim import FaultConfig, LatencyModel, SimConfig, SimServer

FAST = LatencyModel(speed=50.0)  # the real batching loop, 50x faster than an H100
PARAMS = SamplingParams(max_new_tokens=16)


def sim_config(**faults) -> SimConfig:
    return SimConfig(latency=FAST, faults=FaultConfig(seed=7, **faults))


async def run_many(client: LLMClient, count: int, *, stream: bool = False, chat: bool = False,
                   prefix: str = "request") -> tuple[dict[str, str], dict[str, RequestFailed]]:
    """Fire `count` uniquely-identified requests at once; return results and failures by id."""
    async def one(i: int):
        rid = f"{prefix}-{i:04d}"
        text = f"{rid} please answer this"
        if chat:
            out = await client.chat([{"role": "user", "content": text}], params=PARAMS, stream=stream)
        else:
            out = await client.generate(text, params=PARAMS, stream=stream)
        return rid, out

    results: dict[str, str] = {}
    failures: dict[str, RequestFailed] = {}
    outcomes = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    for i, out in enumerate(outcomes):
        rid = f"{prefix}-{i:04d}"
        if isinstance(out, RequestFailed):
            failures[rid] = out
        elif isinstance(out, BaseException):
            raise out
        else:
            got_rid, completions = out
            assert got_rid == rid and len(completions) == 1
            results[rid] = completions[0].text
    return results, failures


def assert_accounting(client: LLMClient, count: int, results: dict, failures: dict) -> dict:
    st = client.stats()
    assert len(results) + len(failures) == count          # none lost
    assert not set(results) & set(failures)               # none counted twice
    assert st["requests"] == count
    assert st["succeeded"] == len(results)
    assert st["failed"] == len(failures) == sum(st["failures"].values())
    assert st["in_flight"] == 0
    assert st["attempts"] == count + st["retries"] - sum(
        1 for f in failures.values() if f.attempts == 0)
    for rid, text in results.items():
        assert text.startswith(rid)                       # each answer is its own request's
    for f in failures.values():
        assert "\n" not in str(f) and str(f)
    return st


@pytest.mark.parametrize("stream", [False, True])
async def test_503_rate_every_request_accounted(stream):
    async with SimServer(sim_config(fail_rate=0.3)) as sim:
        policy = RetryPolicy(attempts=8, base=0.01, cap=0.05)
        async with LLMClient(sim.url, api="sglang", retry=policy, fail_threshold=1000) as client:
            results, failures = await run_many(client, 300, stream=stream)
            st = assert_accounting(client, 300, results, failures)
    c = sim.counters
    assert c.rejected > 50                                 # the fault really fired
    assert st["attempt_errors"].get("http_5xx", 0) == c.rejected
    assert c.received == st["attempts"]                    # every attempt reached the sim
    assert c.completed == len(results)                     # every success is one sim completion
    assert len(failures) <= 3                              # 0.3**8: practically none give up


@pytest.mark.parametrize("stream", [False, True])
async def test_dropped_connections_are_retried(stream):
    async with SimServer(sim_config(drop_rate=0.25)) as sim:
        policy = RetryPolicy(attempts=10, base=0.01, cap=0.05)
        async with LLMClient(sim.url, api="sglang", retry=policy, fail_threshold=1000) as client:
            results, failures = await run_many(client, 300, stream=stream)
            st = assert_accounting(client, 300, results, failures)
    c = sim.counters
    assert c.dropped > 40
    assert st["attempt_errors"].get("disconnect", 0) == c.dropped
    assert c.completed == len(results) == 300 - len(failures)
    assert not failures


@pytest.mark.parametrize("chat", [False, True])
async def test_mid_stream_error_events_are_retried(chat):
    async with SimServer(sim_config(stream_error_rate=0.3)) as sim:
        policy = RetryPolicy(attempts=10, base=0.01, cap=0.05)
        async with LLMClient(sim.url, api="sglang", retry=policy, fail_threshold=1000) as client:
            results, failures = await run_many(client, 200, stream=True, chat=chat)
            st = assert_accounting(client, 200, results, failures)
    c = sim.counters
    assert c.stream_errors > 30
    assert st["attempt_errors"].get("stream_error", 0) == c.stream_errors
    assert c.completed == len(results) == 200
    for text in results.values():                          # no half answers leaked through
        assert text.endswith("please answer this")


async def test_slow_first_token_within_timeout_just_waits():
    async with SimServer(sim_config(slow_first_token_rate=0.5, slow_first_token_s=0.4)) as sim:
        async with LLMClient(sim.url, api="sglang", timeouts=Timeouts(stream_idle=5.0)) as client:
            t0 = time.monotonic()
            results, failures = await run_many(client, 60, stream=True)
            elapsed = time.monotonic() - t0
            st = assert_accounting(client, 60, results, failures)
    assert not failures and st["retries"] == 0
    assert elapsed >= 0.4                                  # the slow ones really were slow


async def test_slow_first_token_past_timeout_is_retried():
    async with SimServer(sim_config(slow_first_token_rate=0.5, slow_first_token_s=1.0)) as sim:
        policy = RetryPolicy(attempts=8, base=0.01, cap=0.05)
        async with LLMClient(sim.url, api="sglang", retry=policy, timeouts=Timeouts(stream_idle=0.3),
                             fail_threshold=1000) as client:
            results, failures = await run_many(client, 60, stream=True)
            st = assert_accounting(client, 60, results, failures)
    assert st["attempt_errors"].get("timeout", 0) > 5
    assert len(results) >= 58                              # 0.5**8 per request to give up


async def test_server_dies_and_comes_back():
    async with SimServer(sim_config()) as sim:
        # enough retry budget to outlast a 1 s outage: the sum of 29 jittered pauses
        # (each up to 0.5 s) is almost never under 1 s
        policy = RetryPolicy(attempts=30, base=0.05, cap=0.5)
        async with LLMClient(sim.url, api="sglang", retry=policy, probe_interval=0.1) as client:
            async def outage():
                # go down mid-run whatever the machine's speed: after some, before all, finished
                while sim.counters.completed < 30:
                    await asyncio.sleep(0.001)
                await sim.outage(1.0)

            outage_task = asyncio.create_task(outage())
            results, failures = await run_many(client, 300, stream=False)
            await outage_task
            st = assert_accounting(client, 300, results, failures)
    assert st["attempt_errors"].get("connect", 0) + st["attempt_errors"].get("disconnect", 0) > 0
    assert sim.counters.completed == len(results)
    assert len(results) == 300                             # all made it once the sim was back


async def test_scheduled_outage_from_config():
    cfg = sim_config(outage_at=0.1, outage_for=0.6)
    async with SimServer(cfg) as sim:
        policy = RetryPolicy(attempts=30, base=0.05, cap=0.3)
        async with LLMClient(sim.url, api="openai", retry=policy, probe_interval=0.1) as client:
            results, failures = await run_many(client, 200, stream=True)
            assert_accounting(client, 200, results, failures)
        assert sim.counters.completed == len(results) == 200


async def test_dead_server_leaves_rotation_and_is_probed_back():
    async with SimServer(sim_config()) as a, SimServer(sim_config()) as b:
        await b.go_down()                                  # b is down "permanently"
        policy = RetryPolicy(attempts=5, base=0.01, cap=0.05)
        async with LLMClient([a.url, b.url], api="sglang", retry=policy, fail_threshold=2,
                             probe_interval=0.05) as client:
            # One at a time until b fails twice and leaves. Which server a prompt's hash picks
            # depends on the servers' URLs (their free ports): a fixed count of warm-ups can
            # all land on a by chance.
            warmups = 0
            while client.stats()["servers"][b.url]["healthy"] and warmups < 200:
                await client.generate(f"warmup-{warmups} please answer this", params=PARAMS)
                warmups += 1
            servers = client.stats()["servers"]
            assert servers[b.url]["healthy"] is False
            assert servers[b.url]["failures"] == 2

            first, failures = await run_many(client, 100, prefix="phase1")
            assert not failures and len(first) == 100
            servers = client.stats()["servers"]
            assert servers[b.url]["failures"] == 2           # out of rotation: not tried again
            assert a.counters.completed == warmups + 100

            await b.come_back()
            for _ in range(100):                           # the background probe notices
                if client.stats()["servers"][b.url]["healthy"]:
                    break
                await asyncio.sleep(0.05)
            assert client.stats()["servers"][b.url]["healthy"] is True

            second, failures = await run_many(client, 100, prefix="phase2")
            assert not failures
            assert b.counters.completed > 10               # b takes work again
            done = {f"warmup-{i}": f"warmup-{i}" for i in range(warmups)}
            assert_accounting(client, warmups + 200, {**done, **first, **second}, {})


async def test_4xx_is_not_retried():
    async with SimServer(sim_config()) as sim:
        async with LLMClient(sim.url, api="sglang", retry=RetryPolicy(attempts=5)) as client:
            with pytest.raises(RequestFailed) as info:
                await client.generate("x", params=SamplingParams(max_new_tokens=-1))
            err = info.value
            assert err.kind == "http_4xx" and err.status == 400 and err.attempts == 1
            assert isinstance(err, BadRequest)             # the typed failure, not only its kind
            assert "max_new_tokens" in str(err) and "\n" not in str(err)
            st = client.stats()
            assert st["attempts"] == 1 and st["retries"] == 0 and st["failed"] == 1
            assert st["servers"][sim.url]["healthy"] is True
        assert sim.counters.received == 1 and sim.counters.bad_requests == 1


async def test_unreachable_server_gives_one_failure():
    async with SimServer(sim_config()) as sim:
        url = sim.url
    policy = RetryPolicy(attempts=3, base=0.01, cap=0.02)
    async with LLMClient(url, api="sglang", retry=policy, timeouts=Timeouts(connect=1.0)) as client:
        with pytest.raises(RequestFailed) as info:
            await client.generate("hello", params=PARAMS)
        assert info.value.kind == "connect" and info.value.attempts == 3
        assert isinstance(info.value, ConnectFailed) and isinstance(info.value, AutoIFError)
        st = client.stats()
        assert st["failed"] == 1 and st["attempts"] == 3 and st["failures"] == {"connect": 1}
