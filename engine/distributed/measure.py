"""Does a shard go as fast next to another shard as alone? 1 vs 2 shards on the simulator.

    python -m engine.distributed.measure [--per-shard 24] [--out FILE.json]

Weak scaling: one shard over N instructions, then two shards over 2N (N each: the instruction
texts are picked so that shard_of() splits them evenly). Each shard runs its own in-process
SGLang simulator (`--backend sim`, like a server per node) and its own sandbox pool, on a local
Ray cluster. Per-shard throughput = the shard's completion tokens (and requests) over its own
wall time; the figure of merit is the 2-shard per-shard rate over the 1-shard rate.
Augmentation is off (augment_batches = 0: the instructions are the seeds), so only the sharded
phase is timed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from engine.config import Config
from engine.distributed.driver import Driver
from engine.distributed.sharding import shard_of
from engine.records import Instruction

WORDS = ("apple banana cherry delta echo falcon garnet harbor island jungle kettle lantern "
         "meadow nickel orchid pepper quartz river saddle timber umber velvet willow yonder").split()


def balanced_instructions(per_shard: int, n_shards: int) -> list[str]:
    """per_shard * n_shards instruction texts, exactly per_shard in each shard."""
    buckets: list[list[str]] = [[] for _ in range(n_shards)]
    i = 0
    while min(len(b) for b in buckets) < per_shard:
        w = WORDS[i % len(WORDS)]
        text = f"Use the word {w} exactly {2 + i // len(WORDS)} times in your reply."
        b = buckets[shard_of(Instruction(text).id, n_shards)]
        if len(b) < per_shard:
            b.append(text)
        i += 1
    return [t for b in buckets for t in b]


JOB = dict(augment_batches=0, verifier_k=4, queries_per_instruction=2, responses_k=4,
           verifier_max_tokens=512, response_max_tokens=256, judge_max_tokens=64,
           stage_concurrency=16, max_inflight_requests=64, pool_workers=1)


async def one(n_shards: int, per_shard: int, work: Path) -> dict:
    texts = balanced_instructions(per_shard, n_shards)
    work.mkdir(parents=True, exist_ok=True)
    seeds = work / f"seeds-{n_shards}.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    cfg = Config.from_flat({**JOB, "seeds_path": str(seeds), "output_dir": str(work / f"run-{n_shards}")})
    t0 = time.perf_counter()
    summary = await Driver(cfg, shards=n_shards, backend="sim", progress=False).run()
    shards = []
    for s in summary["shards"]:
        wall = s["wall_s"]
        shards.append({"shard": s["shard"], "instructions": s["instructions"], "wall_s": wall,
                       "requests": s["client"]["requests"],
                       "completion_tokens": s["client"]["completion_tokens"],
                       "tok_s": round(s["client"]["completion_tokens"] / wall, 1),
                       "req_s": round(s["client"]["requests"] / wall, 2)})
    return {"shards": n_shards, "instructions": len(texts), "job_wall_s": round(time.perf_counter() - t0, 2),
            "per_shard": shards,
            "mean_tok_s_per_shard": round(sum(s["tok_s"] for s in shards) / len(shards), 1),
            "mean_req_s_per_shard": round(sum(s["req_s"] for s in shards) / len(shards), 2),
            "total_tok_s": round(sum(s["tok_s"] for s in shards), 1)}


async def measure(per_shard: int, repeats: int) -> dict:
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        runs: dict[int, list[dict]] = {1: [], 2: []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(repeats):
                for n in (1, 2):
                    runs[n].append(await one(n, per_shard, Path(tmp) / f"rep{r}"))
    finally:
        ray.shutdown()
    best = {n: max(v, key=lambda x: x["mean_tok_s_per_shard"]) for n, v in runs.items()}
    mean = {n: sum(x["mean_tok_s_per_shard"] for x in v) / len(v) for n, v in runs.items()}
    return {"per_shard_instructions": per_shard, "repeats": repeats, "runs": runs,
            "ratio_per_shard_tok_s_2_vs_1": round(mean[2] / mean[1], 3),
            "ratio_total_tok_s_2_vs_1": round(sum(s["tok_s"] for s in best[2]["per_shard"]) /
                                               best[1]["per_shard"][0]["tok_s"], 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-shard", type=int, default=24, help="instructions per shard")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the figures here (JSON)")
    args = ap.parse_args(argv)
    result = asyncio.run(measure(args.per_shard, args.repeats))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for n in (1, 2):
        for run in result["runs"][n]:
            print(f"{n} shard(s): per-shard {run['mean_tok_s_per_shard']} tok/s, "
                  f"{run['mean_req_s_per_shard']} req/s; job {run['job_wall_s']} s", file=sys.stderr)
    print(f"per-shard throughput, 2 shards / 1 shard: {result['ratio_per_shard_tok_s_2_vs_1']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
