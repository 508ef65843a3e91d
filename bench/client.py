"""Benchmark: LLMClient request throughput vs a bare aiohttp loop, against the simulator.

    python -m bench.client [--quick]

The SGLang simulator runs in zero-latency mode in its own process (so it does not share
an event loop with the side being measured); both sides send the same payloads with the
same concurrency over one keep-alive connection pool. Each side is measured 3 times,
interleaved, and the medians are compared: ratios.vs_bare = engine / bare (target >= 0.80).
Writes bench/results/client.json.
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Awaitable, Callable

import aiohttp
import orjson

from bench import common
from engine.aio import run as aio_run
from engine.client import LLMClient
from engine.llm import SamplingParams

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


class Bare:
    """What a hand-written aiohttp loop would do: same body, same pool size, no extras."""

    def __init__(self, url: str, concurrency: int, stream: bool) -> None:
        self.url, self.concurrency, self.stream = url, concurrency, stream

    async def __aenter__(self) -> "Bare":
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def run(self, texts: list[str]) -> tuple[float, float]:
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


class Engine:
    def __init__(self, url: str, concurrency: int, stream: bool) -> None:
        self.client = LLMClient(url, api="sglang", max_in_flight=concurrency, stream=stream)
        self.concurrency = concurrency

    async def __aenter__(self) -> "Engine":
        await self.client.start()
        return self

    async def __aexit__(self, *exc) -> None:
        st = self.client.stats()
        await self.client.close()
        assert st["failed"] == 0 and st["succeeded"] == st["requests"], st

    async def run(self, texts: list[str]) -> tuple[float, float]:
        client = self.client

        async def one(text: str) -> int:
            out = await client.generate(text, params=PARAMS)
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
    for scenario, stream in (("native", False), ("native_stream", True)):
        async with Bare(url, concurrency, stream) as bare, Engine(url, concurrency, stream) as engine:
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
        out[scenario] = {
            "bare_rps": rps["bare"], "engine_rps": rps["engine"],
            "bare_median_rps": common.median(rps["bare"]),
            "engine_median_rps": common.median(rps["engine"]),
            "ratio": common.median(rps["engine"]) / common.median(rps["bare"]),
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

    proc, url = common.start_simulator("--zero-latency", "--responder", "echo")
    try:
        t0 = time.perf_counter()
        scenarios = aio_run(measure(url, n_requests, args.concurrency, args.repeats))
        wall = time.perf_counter() - t0
    finally:
        common.stop_process(proc)

    ratio = scenarios["native"]["ratio"]
    path = common.write_results("client", {
        "what": "LLMClient.generate vs bare aiohttp loop, requests/s against the zero-latency "
                "SGLang simulator in a separate process; each side measured `repeats` times, "
                "each measurement made of alternating short blocks; medians. CPU us/request is "
                "the benchmark process's CPU time (client side only).",
        "quick": args.quick,
        "config": {"requests_per_measurement": n_requests, "concurrency": args.concurrency,
                   "repeats": args.repeats, "max_new_tokens": PARAMS.max_new_tokens,
                   "responder": "echo", "api": "sglang (/generate)"},
        "scenarios": scenarios,
        "wall_seconds": round(wall, 1),
        "target": {"vs_bare": 0.80},
    }, ratios={"vs_bare": ratio, "vs_bare_stream": scenarios["native_stream"]["ratio"]})

    rows = [["scenario", "bare req/s", "engine req/s", "engine/bare",
             "bare CPU us/req", "engine CPU us/req"]]
    for name, sc in scenarios.items():
        rows.append([name, f"{sc['bare_median_rps']:.0f}", f"{sc['engine_median_rps']:.0f}",
                     f"{sc['ratio']:.2f}", f"{sc['bare_cpu_us_per_request']:.0f}",
                     f"{sc['engine_cpu_us_per_request']:.0f}"])
    print(common.table(rows))
    print(f"ratios.vs_bare = {ratio:.2f} (target >= 0.80); wrote {path.relative_to(common.ROOT)}")
    return 0 if ratio >= 0.80 else 1


if __name__ == "__main__":
    sys.exit(main())
