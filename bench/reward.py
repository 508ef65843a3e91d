"""Reward service latency and throughput: `autoif serve-reward` vs the same verifiers in-process.

    python -m bench.reward [--quick]

A run directory is made with instructions of 3 kept verifiers each (the AutoIF-style functions
of bench.pool), scored in batches of 1, 64 and 512 completions in two shapes: every completion
of the batch for one instruction (3 sandbox jobs per batch: the "batch x 3 verifiers" of the
targets) and GRPO groups of 8 completions per instruction (3 jobs per group). Two ways:
  (a) the service, in its own process with the default pool (one worker per core), over HTTP
      from one client sending one batch at a time (POST /score, the path the adapters use);
  (b) in-process: the same functions exec'd once and called on every completion in this
      process (no isolation, no HTTP): the floor a trainer could reach by trusting the code.
Each batch size is timed over many requests, repeated 3 times; medians of the p50 / p99
latency and of verifications/s (completions x 3 / wall time). The machine's load average is
recorded: the CPU is shared with other work. A third service shape labels each completion with
a composed prompt's 3 instruction ids (GRPO groups of 8 per composed prompt, batch 64 only:
every completion runs 3 x 3 functions, one verdict per constraint and the combined reward).
Targets: p99 <= 50 ms for a batch of 64 (ratios.p99_ms_batch64), also at 3 constraints per
completion (ratios.p99_ms_batch64_3constraints), and >= 2,000 verifications/s
(ratios.verifications_per_s, batch 512).
Writes bench/results/reward.json.
"""
from __future__ import annotations

import asyncio
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import common
from bench.workload import VERIFIERS
from engine.records import Instruction, Verifier, VerifiedInstruction
from engine.stages.backtranslate import BackTranslateStage
from engine.state import StateStore

TARGETS = {"p99_ms_batch64": 50.0, "p99_ms_batch64_3constraints": 50.0, "verifications_per_s": 2000.0}
BATCHES = (1, 64, 512)
GROUP = 8                      # completions per instruction in one batch (a GRPO group)
FUNCTIONS = 3
CONSTRAINTS = 3                # instruction ids per completion in the composed shape
REPEATS = 3
WAYS = ("service_one_instruction", "service_grpo_groups", "inprocess")
WORDS = ("data model reward policy gradient sample batch group token prompt answer check value "
         "update step loss train eval score rule text").split()


def make_instructions(n: int) -> list[VerifiedInstruction]:
    names = sorted(VERIFIERS)
    out = []
    for i in range(n):
        codes = [VERIFIERS[names[(i + k) % len(names)]] for k in range(FUNCTIONS)]
        out.append(VerifiedInstruction(Instruction(f"bench instruction {i}"),
                                       tuple((Verifier(c), 1.0) for c in codes), ()))
    return out


def make_completions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(60, 220))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        text = " ".join(words)
        if rng.random() < 0.3:
            text = text.replace(" model", ", model")
        if rng.random() < 0.3:
            text = "<<title>>\n" + "\n".join("* " + line for line in text.split(" rule "))
        texts.append(text)
    return texts


def batch_items(instructions: list[VerifiedInstruction], size: int, seed: int,
                group: int) -> list[tuple[str, str]]:
    texts = make_completions(size, seed)
    groups = max(1, size // group)
    return [(instructions[(seed + i % groups) % len(instructions)].instruction.id, t)
            for i, t in enumerate(texts)]


def composed_items(instructions: list[VerifiedInstruction], size: int, seed: int,
                   group: int) -> list[tuple[list[str], str]]:
    """GRPO groups of `group` completions, each group one composed prompt of CONSTRAINTS ids."""
    texts = make_completions(size, seed)
    n = len(instructions)
    return [([instructions[(seed + CONSTRAINTS * (i // group) + j) % n].instruction.id for j in range(CONSTRAINTS)], t)
            for i, t in enumerate(texts)]


# -- (a) the service -------------------------------------------------------------------------

def start_service(run_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve-reward", str(run_dir),
                             "--port", "0"], cwd=common.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    url = proc.stdout.readline().strip() if ready else ""
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"serve-reward did not start: {url!r}")
    return proc, url


async def time_service(url: str, batches: list[list[tuple[str | list[str], str]]]) -> list[float]:
    async with aiohttp.ClientSession() as session:
        async def one(items):
            body = {"items": [{"instruction_id": i, "completion": c} for i, c in items]}
            t0 = time.perf_counter()
            async with session.post(url + "/score", json=body) as resp:
                data = await resp.json()
            if resp.status != 200 or len(data["rewards"]) != len(items):
                raise RuntimeError(f"serve-reward answered {resp.status}: {data}")
            return time.perf_counter() - t0
        await one(batches[0])                    # warm the connection and the workers
        return [await one(b) for b in batches]


# -- (b) in-process --------------------------------------------------------------------------

def compile_functions(instructions: list[VerifiedInstruction]) -> dict[str, list]:
    table = {}
    for vi in instructions:
        fns = []
        for f in vi.verifiers:
            namespace: dict = {}
            exec(compile(f.code, "<verifier>", "exec"), namespace)   # trusted here: the baseline
            fns.append(namespace["evaluate"])
        table[vi.instruction.id] = fns
    return table


def time_inprocess(table: dict[str, list], batches: list[list[tuple[str, str]]]) -> list[float]:
    out = []
    for items in batches:
        t0 = time.perf_counter()
        for iid, text in items:
            fns = table[iid]
            passed = 0
            for fn in fns:
                try:
                    passed += fn(text) is True
                except Exception:
                    pass
            _ = passed / len(fns)
        out.append(time.perf_counter() - t0)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(latencies: list[float], size: int, constraints: int = 1) -> dict:
    return {"p50_ms": 1000 * p(latencies, 50), "p99_ms": 1000 * p(latencies, 99),
            "verifications_per_s": size * FUNCTIONS * constraints * len(latencies) / sum(latencies)}


def main() -> int:
    args = common.parser("bench.reward", __doc__.splitlines()[0]).parse_args()
    requests = {1: 30, 64: 15, 512: 4} if args.quick else {1: 300, 64: 200, 512: 40}
    instructions = make_instructions(64)
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.sqlite")
        store.put_records(instructions, BackTranslateStage.name)
        store.close()
        proc, url = start_service(Path(tmp))
        try:
            table = compile_functions(instructions)
            runs: dict[str, dict[int, list[dict]]] = {way: {} for way in (*WAYS, "service_3constraints")}
            for rep in range(REPEATS):
                for size in BATCHES:
                    for shape, group in (("one_instruction", size), ("grpo_groups", GROUP)):
                        batches = [batch_items(instructions, size, 1000 * rep + k, group)
                                   for k in range(requests[size])]
                        lat = asyncio.run(time_service(url, batches))
                        runs[f"service_{shape}"].setdefault(size, []).append(summarize(lat, size))
                        if shape == "one_instruction":
                            runs["inprocess"].setdefault(size, []).append(
                                summarize(time_inprocess(table, batches), size))
                composed = [composed_items(instructions, 64, 1000 * rep + k, GROUP) for k in range(requests[64])]
                runs["service_3constraints"].setdefault(64, []).append(
                    summarize(asyncio.run(time_service(url, composed)), 64, CONSTRAINTS))
        finally:
            common.stop_process(proc)
    load = [round(x, 2) for x in os.getloadavg()]
    med = {way: {size: {k: common.median(r[k] for r in reps) for k in reps[0]}
                 for size, reps in by_size.items()} for way, by_size in runs.items()}
    rows = [["batch", "way", "p50 ms", "p99 ms", "verifications/s"]]
    for size in BATCHES:
        for way in WAYS:
            m = med[way][size]
            rows.append([str(size), way, f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}",
                         f"{m['verifications_per_s']:,.0f}"])
    print(common.table(rows))
    svc = med["service_one_instruction"]
    ratios = {"p99_ms_batch64": svc[64]["p99_ms"],
              "verifications_per_s": svc[512]["verifications_per_s"],
              "vs_inprocess_batch512": (svc[512]["verifications_per_s"]
                                        / med["inprocess"][512]["verifications_per_s"]),
              "p99_ms_batch64_grpo_groups": med["service_grpo_groups"][64]["p99_ms"],
              "p99_ms_batch64_3constraints": med["service_3constraints"][64]["p99_ms"]}
    print(f"p99 batch 64: {ratios['p99_ms_batch64']:.1f} ms (target <= {TARGETS['p99_ms_batch64']:g}); "
          f"{ratios['verifications_per_s']:,.0f} verifications/s at batch 512 "
          f"(target >= {TARGETS['verifications_per_s']:,.0f}); "
          f"{ratios['vs_inprocess_batch512']:.3f}x in-process; p99 batch 64 at {CONSTRAINTS} constraints: "
          f"{ratios['p99_ms_batch64_3constraints']:.1f} ms (target <= {TARGETS['p99_ms_batch64_3constraints']:g}); "
          f"load average {load} (shared CPU)")
    path = common.write_results("reward", {
        "quick": args.quick, "functions_per_instruction": FUNCTIONS, "group": GROUP, "constraints": CONSTRAINTS,
        "requests_per_batch_size": {str(k): v for k, v in requests.items()}, "repeats": REPEATS, "pool_workers": os.cpu_count(),
        "median": {way: {str(s): v for s, v in by.items()} for way, by in med.items()},
        "runs": {way: {str(s): v for s, v in by.items()} for way, by in runs.items()},
        "targets": TARGETS, "loadavg": load,
        "note": "service: one client, one batch in flight, HTTP + JSON + sandbox pool; one "
                "instruction per batch (3 jobs) or GRPO groups of 8 (3 jobs per group), or GRPO "
                "groups of 8 per composed prompt of 3 instructions (batch 64); "
                "in-process: the same functions called directly, no isolation; CPU shared"},
        ratios)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
