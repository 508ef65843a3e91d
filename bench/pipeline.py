"""Pipeline: a whole AutoIF run on the simulator, its funnel, and its wall time vs generation only.

One run of every stage (paper defaults: K=8 verifier answers, N=16 queries, K=8 responses)
against `autoif sim` (SGLang latency model, AutoIF-shaped answers) in its own process.
Every request the run sends is recorded; then the same requests are replayed against a
fresh simulator with no stage in between, at the same concurrency: that is the time the
server alone needs. Ratio `wall_over_gen_only` = run wall / replay wall; what is above 1 is
the price of stage dependencies (a query cannot be answered before its instruction
survived cross-validation) plus verification that did not hide behind generation.

Measured at the default pool timeout (2 s) and a tight one (0.25 s), since looping verifiers
hold a worker for the whole timeout and, on few cores, set the pace of the run.

Run: python -m bench.pipeline [--quick]   (quick: 50 instructions; full: 200)
"""
from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson

from bench import common
from engine.cache import CachedLLM
from engine.job import run_full, make_client, make_pool, open_store
from engine.config import Config
from engine.stage import Context
from engine.stages import load_seed_instructions

SIM_FLAGS = ("--responder", "autoif", "--speed", "4")   # an H100-like server, 4x faster
CONCURRENCY = 256


def seed_file(path: Path, count: int) -> None:
    """`count` distinct, code-checkable constraints made from templates."""
    words = ["river", "garden", "signal", "copper", "window", "orbit", "lantern", "harbor"]
    templates = [
        lambda i: f"Answer in fewer than {20 + i} words.",
        lambda i: f"Use the word \"{words[i % 8]}\" at least {2 + i % 5} times in your reply.",
        lambda i: f"Write exactly {2 + i % 6} paragraphs separated by blank lines, variant {i}.",
        lambda i: f"End your reply with the exact sentence \"Reference code {i}.\"",
        lambda i: f"Include at least {1 + i % 9} bullet points that start with \"- \", set {i}.",
    ]
    rows = [{"instruction": templates[i % len(templates)](i // len(templates))} for i in range(count)]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")


class Recording:
    """Passes requests on and remembers each one, so they can be replayed alone."""

    def __init__(self, llm) -> None:
        self.llm, self.model, self.requests = llm, llm.model, []

    async def generate(self, prompt, *, n=1, params=None):
        self.requests.append(("generate", prompt, n, params))
        return await self.llm.generate(prompt, n=n, params=params)

    async def chat(self, messages, *, n=1, params=None):
        self.requests.append(("chat", list(messages), n, params))
        return await self.llm.chat(messages, n=n, params=params)


async def run_once(cfg: Config, run_dir: Path, url: str) -> tuple[float, dict, list]:
    store = open_store(cfg, run_dir)
    try:
        seeds = load_seed_instructions(cfg.seeds_path)
        async with make_client(cfg, [url], "sglang") as client, make_pool(cfg) as pool:
            rec = Recording(client)
            ctx = Context(llm=CachedLLM(rec, store), executor=pool)
            t = time.perf_counter()
            summary = await run_full(cfg, seeds, ctx, client, pool, store, run_dir, None, False)
            return time.perf_counter() - t, summary, rec.requests
    finally:
        store.close()


async def replay(requests: list, url: str, cfg: Config) -> float:
    async with make_client(cfg, [url], "sglang") as client:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(kind, payload, n, params):
            async with limit:
                call = client.generate if kind == "generate" else client.chat
                await call(payload, n=n, params=params)

        t = time.perf_counter()
        await asyncio.gather(*(one(*r) for r in requests))
        return time.perf_counter() - t


async def main_async(quick: bool) -> dict:
    """The run at the default pool timeout (2 s) and at a tight one (0.25 s): the simulator's
    verifier answers include one infinite loop per instruction, as LLM-written code does, and
    each such job holds a worker for the whole timeout."""
    count = 50 if quick else 200
    work = Path(tempfile.mkdtemp(prefix="autoif-bench-pipeline-"))
    runs = []
    try:
        seed_file(work / "seeds.jsonl", count)
        for timeout_s in (2.0, 0.25):
            cfg = replace(Config(), seeds_path=str(work / "seeds.jsonl"), augment_batches=0,
                          max_inflight_requests=CONCURRENCY, stage_concurrency=CONCURRENCY,
                          output_dir=str(work / f"run-{timeout_s}"), pool_timeout_s=timeout_s)
            proc, url = common.start_simulator(*SIM_FLAGS)
            try:
                wall, summary, requests = await run_once(cfg, Path(cfg.output_dir), url)
            finally:
                common.stop_process(proc)
            pool = summary["pool"]
            runs.append({"pool_timeout_s": timeout_s, "wall_s": round(wall, 2),
                         "pool": {k: pool.get(k) for k in ("workers", "jobs", "checks", "timeout", "busy_s")},
                         "funnel": summary["funnel"]})
        proc, url = common.start_simulator(*SIM_FLAGS)      # fresh: no warm prefix cache
        try:
            gen_only = await replay(requests, url, cfg)
        finally:
            common.stop_process(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"instructions": count, "requests": len(requests), "samples": sum(r[2] for r in requests),
            "gen_only_s": round(gen_only, 2), "runs": runs, "sim_flags": list(SIM_FLAGS),
            "concurrency": CONCURRENCY}


def main(argv: list[str] | None = None) -> int:
    args = common.parser("bench.pipeline", __doc__.splitlines()[0]).parse_args(argv)
    data = asyncio.run(main_async(args.quick))
    rows = [["stage", "in", "kept", "out", "dropped"]]
    for stage, r in data["runs"][0]["funnel"].items():
        rows.append([stage, str(r["in"]), str(r["kept"]), str(r.get("out", "")),
                     ", ".join(f"{k}={v}" for k, v in r["dropped"].items()) or "-"])
    print(common.table(rows))
    print(f"{data['instructions']} instructions, {data['requests']} requests ({data['samples']} samples); "
          f"generation only (replay): {data['gen_only_s']:.1f}s")
    ratios = {}
    for run in data["runs"]:
        ratio = round(run["wall_s"] / data["gen_only_s"], 3)
        key = "wall_over_gen_only" if run["pool_timeout_s"] == 2.0 else "wall_over_gen_only_tight_timeout"
        ratios[key] = ratio
        p = run["pool"]
        print(f"  pool timeout {run['pool_timeout_s']}s: run {run['wall_s']:.1f}s, ratio {ratio}; "
              f"{p['timeout']} timed-out checks, pool busy {p['busy_s']:.0f}s over {p['workers']} workers")
    assert data["runs"][0]["funnel"] == data["runs"][1]["funnel"], "the timeout changed the data"
    path = common.write_results("pipeline", {**data, "quick": args.quick}, ratios)
    print(f"ratios: {ratios} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
