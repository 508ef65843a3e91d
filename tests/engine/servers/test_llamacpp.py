"""The embedded llama.cpp backend with the real llama-server and its default model: lifecycle
(start, crash -> restart, clean stop, no orphan after the engine is SIGKILLed, one-line errors)
and LLMClient over llama-server's OpenAI-compatible API (stream / non-stream, n>1, stop,
max tokens, 16 concurrent requests, a stream cancelled mid-way).

Small on purpose (tiny prompts, few tokens): the machine is shared. Skipped, with the reason,
when the `embedded` extra (xllamacpp and the model's chunk packages) is not installed.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from engine.servers import (ServerError, ServerStartError, default_embedded_server, embedded_available,
                            llamacpp_server)
from tests.conftest import alive, wait_gone

EMBEDDED_OK, EMBEDDED_WHY = embedded_available()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not EMBEDDED_OK, reason=f"embedded llama.cpp unavailable: {EMBEDDED_WHY}")]

ROOT = Path(__file__).resolve().parents[3]
PY = sys.executable


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def complete(url: str, prompt: str, max_tokens: int = 4) -> dict:
    req = urllib.request.Request(url + "/v1/completions", method="POST",
                                 data=json.dumps({"prompt": prompt, "max_tokens": max_tokens,
                                                  "temperature": 0}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- lifecycle

async def test_start_crash_restart_stop(tmp_path):
    srv = default_embedded_server(tmp_path, parallel=2, restart_backoff=0.1)
    async with srv:
        assert srv.api == "openai" and srv.model == "qwen2.5-coder-0.5b-instruct-q4_k_m"
        assert get_json(srv.url + "/health")["status"] == "ok"
        first = srv.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while srv.restarts < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await srv.wait_healthy(timeout=60)
        assert srv.pid != first and not alive(first)
        out = await asyncio.to_thread(complete, srv.url, "1, 2, 3,")
        assert out["usage"]["completion_tokens"] == 4
    assert srv.state == "stopped"
    assert wait_gone(srv.pids, 2.0) == []
    log = (tmp_path / "llamacpp.log").read_text()
    assert "-np 2" in log and "exited with code -9" in log


def test_parent_sigkill_leaves_no_orphan(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine.servers import default_embedded_server
        async def main():
            srv = await default_embedded_server(sys.argv[1], parallel=1).start()
            print(srv.pid, srv.url, flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """))
    parent = subprocess.Popen([PY, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        pid, url = parent.stdout.readline().split()
        assert get_json(url + "/health")["status"] == "ok"
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone([int(pid)], 5.0) == [], "llama-server outlived its SIGKILLed parent"


def test_missing_model_is_one_line(tmp_path):
    with pytest.raises(ServerError) as ei:
        llamacpp_server(tmp_path, tmp_path / "nope.gguf")
    assert str(ei.value) == f"llama.cpp model not found: {tmp_path / 'nope.gguf'}"


async def test_bad_model_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file\n" * 100)
    srv = llamacpp_server(tmp_path, bad, parallel=1)
    with pytest.raises(ServerStartError) as ei:
        await srv.start()
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("llamacpp exited with code")
    assert "failed to load model" in msg and "bad.gguf" in msg
    assert wait_gone(srv.pids, 2.0) == []


def test_serve_cli_llamacpp(tmp_path):
    err = tmp_path / "serve.err"
    proc = subprocess.Popen([PY, "-m", "engine.cli", "serve", "--backend", "llamacpp", "--parallel", "2",
                             "--run-dir", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=open(err, "w"), text=True, cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), err.read_text()
        assert complete(url, "Hello")["usage"]["completion_tokens"] == 4
        pid = int(err.read_text().split("(pid ")[1].split(",")[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_gone([pid], 2.0) == []


# ---------------------------------------------------------------- LLMClient against llama-server

@pytest.fixture
def llama(embedded_llama):
    return embedded_llama


@pytest.fixture
async def client(llama):
    from engine.client import LLMClient
    async with LLMClient(llama.url, api=llama.api, model=llama.model) as c:
        yield c


def params(**kw):
    from engine.llm import SamplingParams
    kw.setdefault("temperature", 0.0)
    return SamplingParams(**kw)


async def test_generate_non_streaming_and_streaming_agree(client):
    plain = await client.generate("1, 2, 3, 4, 5,", params=params(max_new_tokens=8), stream=False)
    streamed = await client.generate("1, 2, 3, 4, 5,", params=params(max_new_tokens=8), stream=True)
    assert len(plain) == len(streamed) == 1
    assert plain[0].text and plain[0].text == streamed[0].text
    assert plain[0].finish_reason == streamed[0].finish_reason == "length"
    assert plain[0].completion_tokens == streamed[0].completion_tokens == 8


async def test_chat_non_streaming_and_streaming(client):
    msgs = [{"role": "user", "content": "Name a color."}]
    for stream in (False, True):
        out = await client.chat(msgs, params=params(max_new_tokens=6), stream=stream)
        assert len(out) == 1 and out[0].text and 0 < out[0].completion_tokens <= 6


async def test_stream_deltas(client):
    deltas = [d async for d in client.stream_generate("A B C D E F", params=params(max_new_tokens=10))]
    assert len(deltas) >= 3
    full = await client.generate("A B C D E F", params=params(max_new_tokens=10))
    assert "".join(deltas) == full[0].text


async def test_n_samples(client):
    out = await client.generate("Once upon a time", n=3, params=params(max_new_tokens=6, temperature=1.0))
    assert len(out) == 3 and all(c.text for c in out)
    assert all(c.finish_reason in ("length", "stop") for c in out)


async def test_stop_sequence(client):
    out = await client.generate("1, 2, 3, 4, 5,", params=params(max_new_tokens=16, stop=(" 8",)))
    assert out[0].finish_reason == "stop"
    assert " 8" not in out[0].text and out[0].text.strip().startswith("6")


@pytest.mark.parametrize("k", [1, 5])
async def test_max_tokens(client, k):
    out = await client.generate("Once upon a time", params=params(max_new_tokens=k))
    assert out[0].finish_reason == "length" and out[0].completion_tokens == k


def test_openmp_threads_sleep_while_waiting(llama):
    # a spinning thread waits at each op's barrier for a sibling the scheduler parked: the
    # server's threads must sleep, since the engine and the pool share its cores
    environ = Path(f"/proc/{llama.pid}/environ").read_bytes().split(b"\0")
    assert b"OMP_WAIT_POLICY=passive" in environ


def test_a_wait_policy_in_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert llamacpp_server(tmp_path).config.env["OMP_WAIT_POLICY"] == "active"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert llamacpp_server(tmp_path, env={"OMP_WAIT_POLICY": "active"}).config.env["OMP_WAIT_POLICY"] == "active"
    assert llamacpp_server(tmp_path).config.env["OMP_WAIT_POLICY"] == "passive"


async def test_16_concurrent_requests(client, llama):
    prompts = [f"Count from {i}: {i}, {i + 1}," for i in range(16)]
    outs = await asyncio.gather(*(client.generate(p, params=params(max_new_tokens=6)) for p in prompts))
    assert all(len(o) == 1 and o[0].completion_tokens == 6 for o in outs)
    st = client.stats()
    assert st["succeeded"] >= 16 and st["failed"] == 0


async def test_cancel_mid_stream_frees_the_slot(client, llama):
    gen = client.stream_generate("Write a very long story about a dragon.",
                                 params=params(max_new_tokens=400))
    got = []
    async for delta in gen:
        got.append(delta)
        if len(got) == 3:
            break
    await gen.aclose()  # closes the connection: llama-server must stop generating
    deadline = time.monotonic() + 10
    busy = True
    while busy and time.monotonic() < deadline:
        slots = await asyncio.to_thread(get_json, llama.url + "/slots")
        busy = any(s.get("is_processing") for s in slots)
        await asyncio.sleep(0.1)
    assert not busy, "llama-server kept generating after the client went away"
    # and it still serves
    out = await client.generate("Hi", params=params(max_new_tokens=2))
    assert out[0].completion_tokens == 2


async def test_cancelled_task_mid_stream(client, llama):
    async def consume():
        async for _ in client.stream_generate("Tell me everything about the sea.",
                                              params=params(max_new_tokens=400)):
            pass
    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        slots = await asyncio.to_thread(get_json, llama.url + "/slots")
        if not any(s.get("is_processing") for s in slots):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("llama-server kept generating after the task was cancelled")
