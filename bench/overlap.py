"""Overlap: does the engine hide verification behind generation (and the reverse)?

One workload, measured three ways in one run, against the SGLang simulator in its own process:
  gen_only  - the engine streams Q requests (n=K samples each) and discards the answers;
  exec_only - the same completions go through the sandbox pool (F verifiers x K samples each);
  engine    - both, streamed: each completion is verified the moment it arrives.
Ratio `wall_over_max` = engine / max(gen_only, exec_only); 1.0 is perfect overlap, target <= 1.10.

Three scenarios: `balanced` (the simulator's speed is calibrated so gen_only ~= exec_only),
`pool_bound` (server 2x faster than that) and `server_bound` (server 2x slower).

Run: python -m bench.overlap [--quick]
"""
from __future__ import annotations

import asyncio
import time

from bench import common
from bench.workload import VERIFIERS
from engine.client import LLMClient
from engine.llm import SamplingParams
from engine.runner import StageSpec, StreamRunner
from engine.stage import Context
from sandbox_pool import Limits, PoolConfig, SandboxPool

TARGET = 1.10
K = 8                    # samples per request
MAX_NEW_TOKENS = 64
CONCURRENCY = 64         # requests in flight (the simulator batches them)


class Generate:
    name = "generate"

    async def process(self, prompt: str, ctx: Context) -> list:
        comps = await ctx.llm.generate(prompt, n=K, params=SamplingParams(max_new_tokens=MAX_NEW_TOKENS))
        return [[c.text for c in comps]]


class Verify:
    name = "verify"

    def __init__(self, verifiers: list[str]) -> None:
        self.verifiers = verifiers

    async def process(self, texts: list[str], ctx: Context) -> list:
        results = await ctx.executor.evaluate_many([(code, texts) for code in self.verifiers])
        passed = sum(o.status == "ok" and o.value is True for r in results for o in r)
        return [passed]


def prompts(q: int) -> list[str]:
    return [f"Write a short answer about topic {i}: describe it in plain words without commas."
            for i in range(q)]


async def _measure(url: str, pool: SandboxPool, stages: list, source: list) -> tuple[float, list]:
    out: list = []
    async with LLMClient([url], api="sglang", max_in_flight=CONCURRENCY) as client:
        ctx = Context(llm=client, executor=pool)
        specs = [StageSpec(s, CONCURRENCY) for s in stages]
        t = time.perf_counter()
        await StreamRunner(specs, ctx, queue_size=CONCURRENCY, sink=out.append).run(source)
        return time.perf_counter() - t, out


async def scenario(name: str, speed: float, queries: int, verifiers: list[str], pool: SandboxPool,
                   repeats: int) -> dict:
    proc, url = common.start_simulator("--responder", "random", "--speed", f"{speed:.4f}",
                                       "--max-running", "256")
    try:
        src = prompts(queries)
        gens, execs, boths = [], [], []
        for _ in range(repeats):
            g, completions = await _measure(url, pool, [Generate()], src)
            e, _ = await _measure(url, pool, [Verify(verifiers)], completions)
            w, passed = await _measure(url, pool, [Generate(), Verify(verifiers)], src)
            assert len(passed) == queries
            gens.append(g), execs.append(e), boths.append(w)
    finally:
        common.stop_process(proc)
    g, e, w = common.median(gens), common.median(execs), common.median(boths)
    return {"scenario": name, "sim_speed": round(speed, 4), "queries": queries,
            "checks": queries * K * len(verifiers), "gen_only_s": round(g, 3),
            "exec_only_s": round(e, 3), "engine_s": round(w, 3),
            "wall_over_max": round(w / max(g, e), 3), "runs": {"gen": gens, "exec": execs, "both": boths}}


async def main_async(quick: bool) -> dict:
    queries = 300 if quick else 1200   # long enough that pipeline fill and drain are small
    repeats = 3
    verifiers = list(VERIFIERS.values())[:8]
    async with SandboxPool(PoolConfig(limits=Limits(timeout_s=2.0))) as pool:
        # calibrate: how long do generation and execution take at simulator speed 1?
        proc, url = common.start_simulator("--responder", "random", "--speed", "1")
        try:
            g1, completions = await _measure(url, pool, [Generate()], prompts(queries))
        finally:
            common.stop_process(proc)
        e1, _ = await _measure(url, pool, [Verify(verifiers)], completions)
        balanced = g1 / e1  # speed at which gen_only ~= exec_only
        rows = []
        for name, factor in (("balanced", 1.0), ("pool_bound", 2.0), ("server_bound", 0.5)):
            rows.append(await scenario(name, balanced * factor, queries, verifiers, pool, repeats))
        stats = pool.stats()
    return {"calibration": {"gen_s_at_speed_1": round(g1, 3), "exec_s": round(e1, 3)},
            "scenarios": rows, "pool_workers": stats.get("workers"),
            "k": K, "verifiers": len(verifiers), "max_new_tokens": MAX_NEW_TOKENS,
            "concurrency": CONCURRENCY}


def main(argv: list[str] | None = None) -> int:
    args = common.parser("bench.overlap", __doc__.splitlines()[0]).parse_args(argv)
    data = asyncio.run(main_async(args.quick))
    header = ["scenario", "sim speed", "gen_only s", "exec_only s", "engine s", "wall/max"]
    rows = [header] + [[r["scenario"], f"{r['sim_speed']:.2f}", f"{r['gen_only_s']:.2f}",
                        f"{r['exec_only_s']:.2f}", f"{r['engine_s']:.2f}", f"{r['wall_over_max']:.3f}"]
                       for r in data["scenarios"]]
    print(common.table(rows))
    ratios = {"wall_over_max": next(r["wall_over_max"] for r in data["scenarios"] if r["scenario"] == "balanced")}
    ratios.update({f"wall_over_max_{r['scenario']}": r["wall_over_max"] for r in data["scenarios"]})
    path = common.write_results("overlap", {**data, "target": {"wall_over_max": TARGET}, "quick": args.quick}, ratios)
    print(f"ratios: {ratios}  (target wall_over_max <= {TARGET}; medians of 3)  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
