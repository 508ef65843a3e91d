"""Scale: wall time and peak memory of the engine at 1k, 10k and 100k requests.

Each size runs in a fresh child process (so its peak RSS is its own) that streams requests
from a lazy source through the StreamRunner and the LLMClient to the simulator (zero latency,
in its own process). Time should grow linearly (per-request time flat) and memory stay flat.
Ratios: `time_per_req_largest_over_smallest` (target ~1) and `peak_rss_largest_over_smallest`
(target ~1).

Run: python -m bench.scale [--quick]
"""
from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time

from bench import common

SIZES = (1_000, 10_000, 100_000)
CONCURRENCY = 128


async def _engine(url: str, n: int) -> dict:
    from engine.client import LLMClient
    from engine.llm import SamplingParams
    from engine.runner import StageSpec, StreamRunner
    from engine.stage import Context

    params = SamplingParams(max_new_tokens=16)

    class Generate:
        name = "generate"

        async def process(self, i: int, ctx: Context) -> list:
            comps = await ctx.llm.generate(f"request {i}: say something short", params=params)
            return [len(comps[0].text)]

    def source():
        yield from range(n)     # lazy: memory must not grow with n

    done = 0

    def sink(_: int) -> None:
        nonlocal done
        done += 1

    async with LLMClient([url], api="sglang", max_in_flight=CONCURRENCY) as client:
        ctx = Context(llm=client, executor=None)  # type: ignore[arg-type]
        runner = StreamRunner([StageSpec(Generate(), CONCURRENCY)], ctx, queue_size=CONCURRENCY, sink=sink)
        t = time.perf_counter()
        summary = await runner.run(source(), total=n)
        wall = time.perf_counter() - t
        failed = client.stats().get("failed", 0)
    return {"n": n, "wall_s": wall, "done": done, "failed": failed, "stopped": summary.stopped}


def child(url: str, n: int) -> None:
    try:
        from engine.aio import install_uvloop
        install_uvloop()
    except ImportError:
        pass
    out = asyncio.run(_engine(url, n))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(url: str, n: int) -> dict:
    p = subprocess.run([sys.executable, "-m", "bench.scale", "--child", url, str(n)],
                       cwd=common.ROOT, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1], int(argv[2]))
        return 0
    args = common.parser("bench.scale", __doc__.splitlines()[0]).parse_args(argv)
    repeats = 1 if args.quick else 3
    proc, url = common.start_simulator("--zero-latency", "--responder", "random")
    rows = []
    try:
        for n in SIZES:
            runs = [measure(url, n) for _ in range(repeats)]
            for r in runs:
                assert r["done"] + r["failed"] == n, r
            rows.append({"n": n, "wall_s": round(common.median(r["wall_s"] for r in runs), 3),
                         "us_per_req": round(common.median(r["wall_s"] / n * 1e6 for r in runs), 1),
                         "peak_rss_mb": round(common.median(r["peak_rss_mb"] for r in runs), 1),
                         "failed": max(r["failed"] for r in runs), "repeats": repeats})
    finally:
        common.stop_process(proc)
    small, large = rows[0], rows[-1]
    ratios = {"time_per_req_largest_over_smallest": round(large["us_per_req"] / small["us_per_req"], 3),
              "peak_rss_largest_over_smallest": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)}
    table = [["requests", "wall s", "us/request", "peak RSS MB", "failed"]] + [
        [f"{r['n']:,}", f"{r['wall_s']:.2f}", f"{r['us_per_req']:.0f}", f"{r['peak_rss_mb']:.1f}", str(r["failed"])]
        for r in rows]
    print(common.table(table))
    path = common.write_results("scale", {"sizes": rows, "concurrency": CONCURRENCY, "quick": args.quick}, ratios)
    print(f"ratios: {ratios} (linear time and flat memory give ~1.0) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
