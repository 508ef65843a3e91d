"""Benchmark: LLMClient request throughput vs a bare aiohttp loop, against the simulator.

    python -m bench.client [--quick]

The SGLang simulator runs in zero-latency mode in its own process (so it does not share
an event loop with the side being measured); both sides send the same payloads with the
same concurrency over one keep-alive connection pool. Scenarios:
  chat, chat_n8   POST /v1/chat/completions, non-streamed, n=1 and n=8: the path every
                  pipeline stage takes (engine.stages.base.ask -> LLMClient.chat; the
                  verifier and response stages ask for 8 samples per request);
  native, native_stream   SGLang's native POST /generate, plain and streamed (SSE).
Each side is measured 3 times, interleaved, and the medians are compared:
ratios.vs_bare_chat and ratios.vs_bare = engine / bare (target >= 0.80 for both).
Writes bench/results/client.json.
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Awaitable, Callable, NamedTuple

import aiohttp
import orjson

from bench import common
from engine.aio import run as aio_run
from engine.config import Config
from engine.run import make_client
from engine.llm import SamplingParams
from engine.prompting import user_message

PARAMS = SamplingParams(max_new_tokens=64, temperature=0.7)


def prompts(count: int) -> list[str]:
    base = ("Write a response that follows the instruction exactly: answer in three short "
            "paragraphs, avoid commas, and end with a question. Topic number")
    return [f"{base} {i} about llamas and their care" for i in range(count)]


# -- the two sides -------------------------------------------------------------------------------
async def drive(texts: list[str], concurrency: int, one: Callable[[str], Awaitable[int]]) -> tuple[float, float]:
    """Send `texts` through `concurrency` workers; returns (wall seconds, CPU seconds)."""
    nxt = 0
    total_chars = 0

    async def worker() -> None:
        nonlocal nxt, total_chars
        while nxt < len(texts):
            i = nxt
            nxt += 1
            total_chars += await one(texts[i])

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert total_chars > 0
    return time.perf_counter() - t0, time.process_time() - c0


class Scenario(NamedTuple):
    name: str
    chat: bool      # /v1/chat/completions (else native /generate)
    stream: bool
    n: int


SCENARIOS = (Scenario("chat", True, False, 1), Scenario("chat_n8", True, False, 8),
             Scenario("native", False, False, 1), Scenario("native_stream", False, True, 1))
TARGET = 0.80


class Bare:
    """What a hand-written aiohttp loop would do: same body, same pool size, no extras."""

    def __init__(self, url: str, concurrency: int, sc: Scenario) -> None:
        self.url, self.concurrency, self.sc = url, concurrency, sc
        self.stream = sc.stream

    async def __aenter__(self) -> "Bare":
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def run(self, texts: list[str]) -> tuple[float, float]:
        if self.sc.chat:
            return await self._run_chat(texts)
        headers = {"Content-Type": "application/json"}
        sp = {"max_new_tokens": PARAMS.max_new_tokens, "temperature": PARAMS.temperature,
              "top_p": PARAMS.top_p}
        url, stream, session = self.url + "/generate", self.stream, self.session

        async def one(text: str) -> int:
            body = {"text": text, "sampling_params": sp}
            if stream:
                body["stream"] = True
            async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
                if not stream:
                    return len(orjson.loads(await r.read())["text"])
                last = b""
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        last = line
                return len(orjson.loads(last[6:])["text"])

        return await drive(texts, self.concurrency, one)

    async def _run_chat(self, texts: list[str]) -> tuple[float, float]:
        headers = {"Content-Type": "application/json"}
        url, session, n = self.url + "/v1/chat/completions", self.session, self.sc.n
        common_body = {"model": "default", "max_tokens": PARAMS.max_new_tokens,
                       "temperature": PARAMS.temperature, "top_p": PARAMS.top_p}
        if n != 1:
            common_body["n"] = n

        async def one(text: str) -> int:
            body = {**common_body, "messages": [{"role": "user", "content": text}]}
            async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
                choices = orjson.loads(await r.read())["choices"]
                return sum(len(c["message"]["content"]) for c in choices)

        return await drive(texts, self.concurrency, one)


class Engine:
    """The engine's client as a run builds it (engine.run.make_client), at the same concurrency."""

    def __init__(self, url: str, concurrency: int, sc: Scenario) -> None:
        cfg = Config().replace_flat(max_inflight_requests=concurrency)
        self.client = make_client(cfg, [url], "sglang")
        self.concurrency, self.sc = concurrency, sc

    async def __aenter__(self) -> "Engine":
        await self.client.start()
        return self

    async def __aexit__(self, *exc) -> None:
        st = self.client.stats()
        await self.client.close()
        assert st["failed"] == 0 and st["succeeded"] == st["requests"], st

    async def run(self, texts: list[str]) -> tuple[float, float]:
        client, n, stream = self.client, self.sc.n, self.sc.stream

        if self.sc.chat:
            async def one(text: str) -> int:
                out = await client.chat(user_message(text), n=n, params=PARAMS, stream=stream)
                return sum(len(c.text) for c in out)
        else:
            async def one(text: str) -> int:
                out = await client.generate(text, params=PARAMS, stream=stream)
                return len(out[0].text)

        return await drive(texts, self.concurrency, one)


# -- main ----------------------------------------------------------------------------------------
async def measure(url: str, n_requests: int, concurrency: int, repeats: int,
                  blocks: int = 6) -> dict:
    """Each of the `repeats` measurements per side is `blocks` short runs that alternate
    bare/engine, so bursts of load from other work on a shared machine hit both sides."""
    out: dict = {}
    texts = prompts(n_requests)
    per_block = max(concurrency, n_requests // blocks)
    for sc in SCENARIOS:
        async with Bare(url, concurrency, sc) as bare, Engine(url, concurrency, sc) as engine:
            await bare.run(texts[:300])                                       # warm up both
            await engine.run(texts[:300])
            rps: dict[str, list[float]] = {"bare": [], "engine": []}
            cpu: dict[str, list[float]] = {"bare": [], "engine": []}
            for _ in range(repeats):
                wall = {"bare": 0.0, "engine": 0.0}
                used = {"bare": 0.0, "engine": 0.0}
                done = 0
                for b in range(blocks):
                    chunk = texts[b * per_block:(b + 1) * per_block] or texts[:per_block]
                    order = (("bare", bare), ("engine", engine)) if b % 2 == 0 else \
                        (("engine", engine), ("bare", bare))
                    for name, side in order:
                        w, c = await side.run(chunk)
                        wall[name] += w
                        used[name] += c
                    done += len(chunk)
                for name in rps:
                    rps[name].append(done / wall[name])
                    cpu[name].append(1e6 * used[name] / done)
        out[sc.name] = {
            "bare_rps": rps["bare"], "engine_rps": rps["engine"],
            "bare_median_rps": common.median(rps["bare"]),
            "engine_median_rps": common.median(rps["engine"]),
            # each repeat's two sides ran in alternating blocks: compare them pairwise
            "ratio": common.median(e / b for e, b in zip(rps["engine"], rps["bare"])),
            "bare_cpu_us_per_request": common.median(cpu["bare"]),
            "engine_cpu_us_per_request": common.median(cpu["engine"]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.parser("python -m bench.client", __doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=None, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n_requests = args.requests or (3000 if args.quick else 8000)

    load_start = common.loadavg()
    proc, url = common.start_simulator("--zero-latency", "--responder", "echo")
    try:
        t0 = time.perf_counter()
        scenarios = aio_run(measure(url, n_requests, args.concurrency, args.repeats))
        wall = time.perf_counter() - t0
    finally:
        common.stop_process(proc)

    ratios = {"vs_bare_chat": scenarios["chat"]["ratio"], "vs_bare_chat_n8": scenarios["chat_n8"]["ratio"],
              "vs_bare": scenarios["native"]["ratio"], "vs_bare_stream": scenarios["native_stream"]["ratio"]}
    load = common.loadavg()
    path = common.write_results("client", {
        "what": "LLMClient (built as a run builds it) vs a bare aiohttp loop, requests/s against the "
                "zero-latency SGLang simulator in a separate process, per scenario (chat: "
                "/v1/chat/completions, the stages' path; native: /generate); each side measured "
                "`repeats` times, each measurement made of alternating short blocks; req/s are "
                "medians, a ratio is the median of the per-repeat ratios. CPU us/request is the "
                "benchmark process's CPU time (client side only).",
        "quick": args.quick,
        "config": {"requests_per_measurement": n_requests, "concurrency": args.concurrency,
                   "repeats": args.repeats, "max_new_tokens": PARAMS.max_new_tokens,
                   "responder": "echo", "scenarios": [sc._asdict() for sc in SCENARIOS]},
        "scenarios": scenarios,
        "loadavg_at_start": load_start,
        "wall_seconds": round(wall, 1),
        "target": {"vs_bare_chat": TARGET, "vs_bare": TARGET},
    }, ratios=ratios)

    rows = [["scenario", "bare req/s", "engine req/s", "engine/bare",
             "bare CPU us/req", "engine CPU us/req"]]
    for name, sc in scenarios.items():
        rows.append([name, f"{sc['bare_median_rps']:.0f}", f"{sc['engine_median_rps']:.0f}",
                     f"{sc['ratio']:.2f}", f"{sc['bare_cpu_us_per_request']:.0f}",
                     f"{sc['engine_cpu_us_per_request']:.0f}"])
    print(common.table(rows))
    ok = ratios["vs_bare_chat"] >= TARGET and ratios["vs_bare"] >= TARGET
    print(f"ratios.vs_bare_chat = {ratios['vs_bare_chat']:.2f}, ratios.vs_bare = {ratios['vs_bare']:.2f} "
          f"(target >= {TARGET}); load average {load_start} at start, {load} at end "
          f"(shared machine); wrote {path.relative_to(common.ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
