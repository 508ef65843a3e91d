"""LLMClient against the SGLang simulator over real HTTP: APIs, streaming, n, params, endpoints."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from engine.client import LLMClient, RequestFailed, Timeouts, parse_metrics
from engine.client.sse import SSEDecoder
from engine.llm import LLM, SamplingParams
from engine.sim import LatencyModel, ScriptedResponder, SimConfig, SimServer

FAST = LatencyModel(speed=50.0)


def config(**kw) -> SimConfig:
    kw.setdefault("latency", FAST)
    return SimConfig(**kw)


@pytest.fixture
async def sim():
    async with SimServer(config()) as server:
        yield server


def test_client_satisfies_llm_protocol():
    client: LLM = LLMClient("http://127.0.0.1:1")
    assert client.model == "default"


def test_timeouts_bound_each_kind_of_wait():
    t = Timeouts(request=5.0, connect=2.0, stream_idle=3.0, control=4.0)
    assert (t.attempt().total, t.attempt().sock_connect, t.attempt().sock_read) == (5.0, 2.0, None)
    assert (t.stream().total, t.stream().sock_connect, t.stream().sock_read) == (None, 2.0, 3.0)
    assert (t.control_call().total, t.control_call().sock_connect) == (4.0, 2.0)
    assert LLMClient("http://127.0.0.1:1").timeouts == Timeouts(request=600.0, connect=10.0, stream_idle=120.0,
                                                               control=10.0)


@pytest.mark.parametrize("api", ["sglang", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_generate_n_samples(sim, api, stream):
    async with LLMClient(sim.url, api=api) as client:
        out = await client.generate("tell me about llamas", n=4, stream=stream,
                                    params=SamplingParams(max_new_tokens=32))
    assert len(out) == 4
    for c in out:
        assert c.text == "tell me about llamas"
        assert c.finish_reason == "stop" and c.server == sim.url
        assert c.prompt_tokens == 4 and c.completion_tokens == 4
    assert sim.counters.completed == 1 and sim.counters.samples == 4
    route = "/generate" if api == "sglang" else "/v1/completions"
    assert sim.request_log[-1][0] == route and sim.request_log[-1][1]["n"] == 4


@pytest.mark.parametrize("api", ["sglang", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_chat(sim, api, stream):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello there friend"}]
    async with LLMClient(sim.url, api=api) as client:
        out = await client.chat(messages, n=2, stream=stream)
    assert [c.text for c in out] == ["hello there friend"] * 2
    assert sim.request_log[-1][0] == "/v1/chat/completions"


@pytest.mark.parametrize("api", ["sglang", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_stop_and_max_new_tokens(sim, api, stream):
    async with LLMClient(sim.url, api=api) as client:
        [cut] = await client.generate("one two three four five six", stream=stream,
                                      params=SamplingParams(max_new_tokens=3))
        [stopped] = await client.generate("alpha beta STOP gamma", stream=stream,
                                          params=SamplingParams(stop=("STOP",)))
    assert cut.text == "one two three " and cut.finish_reason == "length"
    assert cut.completion_tokens == 3
    assert stopped.text == "alpha beta " and stopped.finish_reason == "stop"


@pytest.mark.parametrize("api", ["sglang", "openai"])
async def test_json_schema_and_seed_pass_through(sim, api):
    schema = '{"type": "object", "properties": {"ok": {"type": "boolean"}}}'
    params = SamplingParams(json_schema=schema, seed=11, temperature=0.0, top_p=0.9,
                            extra={"top_k": 5} if api == "sglang" else {"top_p": 0.5})
    async with LLMClient(sim.url, api=api) as client:
        await client.generate("give json", params=params)
        await client.chat([{"role": "user", "content": "give json"}], params=params)
    for route, sp in list(sim.request_log)[-2:]:
        assert orjson.loads(sp["json_schema"]) == orjson.loads(schema)
        assert sp["sampling_seed"] == 11 and sp["temperature"] == 0.0
    native_or_completion = list(sim.body_log)[-2][1]
    if api == "sglang":
        assert native_or_completion["sampling_params"]["top_k"] == 5
        assert native_or_completion["sampling_params"]["json_schema"] == schema
    else:
        assert native_or_completion["top_p"] == 0.5
        assert native_or_completion["response_format"]["type"] == "json_schema"


async def test_auto_detects_sglang_and_falls_back_to_openai(sim):
    async with LLMClient(sim.url, api="auto") as client:
        await client.generate("hi")
        assert client.stats()["api"] == "sglang"
    assert sim.request_log[-1][0] == "/generate"

    # a server without SGLang's native routes (here: a bare OpenAI-only aiohttp app)
    from aiohttp import web

    async def completions(request):
        body = await request.json()
        return web.json_response({"id": "x", "object": "text_completion", "model": "m",
                                  "choices": [{"index": 0, "text": body["prompt"][::-1],
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                            "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with LLMClient(f"http://127.0.0.1:{port}", api="auto") as client:
            [c] = await client.generate("abc")
            assert c.text == "cba" and client.stats()["api"] == "openai"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("api", ["sglang", "openai"])
async def test_stream_generate_yields_deltas(sim, api, chat):
    async with LLMClient(sim.url, api=api) as client:
        if chat:
            it = client.stream_generate(messages=[{"role": "user", "content": "a b c d e"}])
        else:
            it = client.stream_generate("a b c d e")
        deltas = [d async for d in it]
        assert "".join(deltas) == "a b c d e" and len(deltas) >= 2
        st = client.stats()
        assert st["requests"] == st["succeeded"] == 1


async def test_stream_generate_early_close_aborts_on_server():
    slow = LatencyModel(speed=1.0, decode_base_ms=20.0)
    async with SimServer(config(latency=slow)) as sim:
        async with LLMClient(sim.url, api="sglang") as client:
            text = " ".join(f"w{i}" for i in range(200))
            it = client.stream_generate(text)
            first = await it.__anext__()
            assert first.startswith("w0")
            await it.aclose()
            for _ in range(50):
                if sim.scheduler.num_running == 0:
                    break
                await asyncio.sleep(0.02)
            assert sim.scheduler.num_running == 0        # the server stopped generating
            st = client.stats()
            assert st["in_flight"] == 0 and st["failed"] == 0 and st["cancelled"] == 1
            assert st["requests"] == st["succeeded"] + st["failed"] + st["cancelled"]


async def test_n_fallback_for_servers_that_reject_n():
    async with SimServer(config(allow_n=False)) as sim:      # behaves like llama-server
        async with LLMClient(sim.url, api="openai") as client:
            out = await client.generate("x y z", n=3)
            assert [c.text for c in out] == ["x y z"] * 3
            out = await client.chat([{"role": "user", "content": "q"}], n=2)
            assert len(out) == 2
            st = client.stats()
        assert st["n_fallbacks"] == 2 and st["succeeded"] == 2 and st["failed"] == 0
        assert sim.counters.bad_requests == 1                 # learned once, then fanned out
        assert sim.counters.completed == 5


async def test_a_bad_request_with_n_is_one_failure_not_n():
    """A 4xx that is not about n (here: an empty prompt) must not be retried as n singles."""
    async with SimServer(config()) as sim:
        async with LLMClient(sim.url, api="openai") as client:
            with pytest.raises(RequestFailed) as err:
                await client.generate("", n=4)
            assert err.value.kind == "http_4xx"
            st = client.stats()
        assert st["failed"] == 1 and st["succeeded"] == 0
        # the n=4 request and one single-sample probe; not four more singles
        assert sim.counters.bad_requests == 2


async def test_cancelled_generate_is_counted_once(sim):
    slow = LatencyModel(speed=1.0)
    async with SimServer(config(latency=slow)) as sim2:
        async with LLMClient(sim2.url, api="sglang") as client:
            task = asyncio.create_task(client.generate(" ".join(["w"] * 200)))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            st = client.stats()
    assert st["requests"] == 1 and st["cancelled"] == 1 and st["in_flight"] == 0
    assert st["servers"][sim2.url]["outstanding"] == 0


async def test_token_counters(sim):
    async with LLMClient(sim.url, api="sglang") as client:
        await client.generate("one two three", n=2)
        st = client.stats()
    assert st["prompt_tokens"] == 3 and st["completion_tokens"] == 6


async def test_extra_endpoints(sim):
    async with LLMClient(sim.url, api="sglang") as client:
        assert await client.admin.health() == {sim.url: True}
        info = await client.admin.model_info()
        assert info["model_path"] == sim.config.model_path and info["is_generation"] is True
        server = await client.admin.server_info()
        assert server["max_running_requests"] == 256 and "internal_states" in server
        assert await client.admin.capacity() == 256
        await client.generate("warm the cache")
        m = await client.admin.metrics()
        assert m["sglang:num_requests_total"] == 1.0
        assert m["sglang:num_running_reqs"] == 0.0 and "sglang:gen_throughput" in m
        assert await client.admin.flush_cache() == {sim.url: True}
        await client.admin.abort_request("nothing-running")


async def test_abort_request_ends_generation_with_abort(sim):
    slow = LatencyModel(speed=1.0)
    async with SimServer(config(latency=slow)) as sim2:
        async with LLMClient(sim2.url, api="sglang") as client:
            long_prompt = " ".join(["word"] * 300)
            task = asyncio.create_task(client.generate(long_prompt))
            await asyncio.sleep(0.2)
            assert sim2.scheduler.num_running == 1
            assert await client.admin.flush_cache() == {sim2.url: False}   # busy: SGLang refuses
            rid = sim2.scheduler.running[0].rid
            await client.admin.abort_request(rid)
            [c] = await task
            assert c.finish_reason == "abort" and len(c.text) < len(long_prompt)


async def test_capacity_sums_servers():
    async with SimServer(config(latency=LatencyModel(speed=50, max_running=8))) as a, \
            SimServer(config(latency=LatencyModel(speed=50, max_running=24))) as b:
        async with LLMClient([a.url, b.url]) as client:
            assert await client.admin.capacity() == 32
            assert await client.admin.capacity(b.url) == 24


async def test_in_flight_bound():
    slow = LatencyModel(speed=5.0, max_running=64)
    async with SimServer(config(latency=slow)) as sim:
        async with LLMClient(sim.url, api="sglang", max_in_flight=4) as client:
            peak = 0

            async def watch():
                nonlocal peak
                while True:
                    peak = max(peak, sim.scheduler.num_running + sim.scheduler.num_waiting)
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            await asyncio.gather(*(client.generate(f"p{i} a b c") for i in range(20)))
            watcher.cancel()
    assert 1 <= peak <= 4


def test_sse_decoder_handles_split_and_long_lines():
    dec = SSEDecoder()
    big = b"x" * 200_000
    stream = b"data: {\"a\":1}\n\n: comment\n\ndata: " + big + b"\r\n\r\ndata: [DONE]\n\n"
    events = []
    for i in range(0, len(stream), 777):
        events += dec.feed(stream[i:i + 777])
    events += dec.flush()
    assert events == [b'{"a":1}', big, b"[DONE]"]


def test_prometheus_parser():
    text = (
        "# HELP sglang:num_running_reqs x\n# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{model_name="m",dp_rank="0"} 3.0\n'
        'sglang:num_running_reqs{model_name="m",dp_rank="1"} 4.0\n'
        'sglang:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 9.0\n'
        'sglang:e2e_request_latency_seconds_count{model_name="m"} 9.0\n'
        "plain_metric 1e3\n"
    )
    m = parse_metrics(text)
    assert m == {"sglang:num_running_reqs": 7.0,
                 "sglang:e2e_request_latency_seconds_count": 9.0, "plain_metric": 1000.0}


async def test_scripted_responder_through_client():
    responder = ScriptedResponder().add(r"length", ["def evaluate(response):\n    return len(response) < 10",
                                                    "not python at all {{{"])
    async with SimServer(config(responder=responder)) as sim:
        async with LLMClient(sim.url) as client:
            out = await client.generate("write a length check", n=3)
    assert [c.text for c in out] == [responder.rules[0].responses[i % 2] for i in range(3)]


async def test_bad_json_schema_fails_locally_without_http(sim):
    async with LLMClient(sim.url, api="openai") as client:
        with pytest.raises(RequestFailed) as info:
            await client.generate("x", params=SamplingParams(json_schema="{not json"))
        assert info.value.kind == "http_4xx" and info.value.attempts == 0
    assert sim.counters.received == 0
