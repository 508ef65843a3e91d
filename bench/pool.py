"""Verifier throughput: sandbox pool vs unsafe in-process exec vs an interpreter per check.

    python -m bench.pool [--quick]

The same AutoIF-style verifiers (word counts, regexes, case rules...) run over
the same synthetic responses (~200 per job) three ways:
  (a) in-process exec with signal.alarm around every check, as the reference
      AutoIF scripts do (fast, no isolation at all);
  (b) a fresh `python -c` per (verifier, response) check (isolated, slow; only a
      sample is timed and checks/s extrapolated from it);
  (c) SandboxPool.evaluate_many (isolated).
Each measurement is repeated 3 times; medians are reported. Targets:
ratios.vs_inprocess = c/a >= 0.30 and ratios.vs_subprocess = c/b >= 20.
Writes bench/results/pool.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

from bench import common
from sandbox_pool import SandboxPool

TARGETS = {"vs_inprocess": 0.30, "vs_subprocess": 20.0}
INPUTS_PER_JOB = 200
REPEATS = 3

# What an LLM typically writes for AutoIF instructions (one evaluate(response) each).
VERIFIERS = {
    "min_words": "def evaluate(response):\n    return len(response.split()) >= 120\n",
    "no_commas": "def evaluate(response):\n    return ',' not in response\n",
    "all_lowercase": "def evaluate(response):\n    return response == response.lower()\n",
    "three_sections": (
        "def evaluate(response):\n"
        "    parts = [p for p in response.split('***') if p.strip()]\n"
        "    return len(parts) == 3\n"),
    "bullets": (
        "import re\n"
        "def evaluate(response):\n"
        "    return len(re.findall(r'^\\s*[\\*\\-] ', response, flags=re.MULTILINE)) >= 3\n"),
    "keyword_twice": (
        "import re\n"
        "def evaluate(response):\n"
        "    return len(re.findall(r'\\bdata\\b', response, flags=re.IGNORECASE)) >= 2\n"),
    "title": (
        "import re\n"
        "def evaluate(response):\n"
        "    return re.search(r'<<[^\\n]+>>', response) is not None\n"),
    "max_sentences": (
        "import re\n"
        "def evaluate(response):\n"
        "    sentences = [s for s in re.split(r'(?<=[.!?])\\s+', response.strip()) if s]\n"
        "    return len(sentences) <= 10\n"),
    "few_capitals": (
        "import re\n"
        "def evaluate(response):\n"
        "    words = re.findall(r'[A-Za-z]+', response)\n"
        "    caps = sum(1 for w in words if w.isupper())\n"
        "    return caps / max(1, len(words)) < 0.05\n"),
    "ends_with": (
        "def evaluate(response):\n"
        "    return response.strip().endswith('Is there anything else I can help with?')\n"),
    "is_json": (
        "import json\n"
        "def evaluate(response):\n"
        "    try:\n"
        "        json.loads(response)\n"
        "        return True\n"
        "    except ValueError:\n"
        "        return False\n"),
    "letter_z": (
        "from collections import Counter\n"
        "def evaluate(response):\n"
        "    return Counter(response.lower())['z'] >= 2\n"),
}

_WORDS = ("the data model system user answer result value quick brown fox jumps over lazy dog "
          "analysis report summary important note example python code verify response length "
          "zebra puzzle amazing quiz NASA API JSON HTTP city river mountain music history").split()


def responses(n: int, seed: int = 7) -> list[str]:
    """Synthetic responses of varied length and shape (sections, bullets, titles, JSON...)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(json.dumps({"answer": " ".join(rng.choices(_WORDS, k=rng.randint(3, 30)))}))
            continue
        paragraphs = []
        for _p in range(rng.randint(1, 5)):
            sentences = []
            for _s in range(rng.randint(1, 6)):
                words = rng.choices(_WORDS, k=rng.randint(4, 22))
                words[0] = words[0].capitalize()
                if rng.random() < 0.3:
                    words.insert(rng.randrange(len(words)), ",")
                sentences.append(" ".join(words).replace(" ,", ",") + rng.choice(".!?"))
            paragraphs.append(" ".join(sentences))
        if rng.random() < 0.3:
            paragraphs.insert(1, "\n".join(f"* {' '.join(rng.choices(_WORDS, k=5))}" for _ in range(rng.randint(1, 5))))
        text = ("\n***\n" if rng.random() < 0.4 else "\n\n").join(paragraphs)
        if rng.random() < 0.3:
            text = f"<<{' '.join(rng.choices(_WORDS, k=3))}>>\n" + text
        if rng.random() < 0.3:
            text += "\nIs there anything else I can help with?"
        if rng.random() < 0.2:
            text = text.lower()
        out.append(text)
    return out


def make_jobs(rounds: int) -> list[tuple[str, list[str]]]:
    jobs = []
    for r in range(rounds):
        texts = responses(INPUTS_PER_JOB, seed=r)
        jobs.extend((code, texts) for code in VERIFIERS.values())
    return jobs


# ---- (a) unsafe in-process --------------------------------------------------------------------

class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def run_inprocess(jobs) -> tuple[float, list]:
    signal.signal(signal.SIGALRM, _on_alarm)
    verdicts = []
    t0 = time.perf_counter()
    for code, inputs in jobs:
        namespace: dict = {}
        exec(code, namespace)
        fn = namespace["evaluate"]
        out = []
        for x in inputs:
            signal.alarm(5)
            try:
                out.append(fn(x))
            except Exception:
                out.append(None)
            finally:
                signal.alarm(0)
        verdicts.append(out)
    return time.perf_counter() - t0, verdicts


# ---- (b) an interpreter per check ---------------------------------------------------------------

_CHILD = ("import json, sys\n"
          "code, response = json.loads(sys.stdin.read())\n"
          "ns = {}\n"
          "exec(code, ns)\n"
          "print(json.dumps(ns['evaluate'](response)))\n")


def run_subprocess_sample(jobs, sample: int) -> float:
    """Seconds per check, timed over `sample` checks spread over all verifiers."""
    rng = random.Random(3)
    checks = [(code, rng.choice(inputs)) for code, inputs in rng.sample(jobs, min(sample, len(jobs)))]
    while len(checks) < sample:
        code, inputs = rng.choice(jobs)
        checks.append((code, rng.choice(inputs)))
    t0 = time.perf_counter()
    for code, text in checks:
        subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([code, text]),
                       capture_output=True, text=True, timeout=30, check=True)
    return (time.perf_counter() - t0) / len(checks)


# ---- (c) the pool, with (a) and (b) interleaved so all three see the same machine load ------------

async def measure(jobs, sample: int, overhead_jobs: int) -> dict:
    workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    async with SandboxPool(workers=workers, timeout_s=5.0) as pool:
        startup = time.perf_counter() - t0
        await pool.evaluate_many(jobs[: 2 * workers])  # warm-up
        a_runs, b_per_check, c_runs = [], [], []
        reference = verdicts = None
        for _ in range(REPEATS):
            seconds, reference = run_inprocess(jobs)
            a_runs.append(seconds)
            t = time.perf_counter()
            results = await pool.evaluate_many(jobs)
            c_runs.append(time.perf_counter() - t)
            verdicts = [[o.value if o.ok else None for o in r] for r in results]
            failed = sum(1 for r in results for o in r if not o.ok)
            assert failed == 0, f"{failed} checks did not complete"
            b_per_check.append(run_subprocess_sample(jobs, sample))

        empty = "def evaluate(response):\n    return True\n"
        latency = []  # one job at a time: the full round trip of a 1-input job
        batch = []  # many 1-input jobs at once: amortised cost per job with all workers busy
        for _ in range(REPEATS):
            xs = []
            for _ in range(overhead_jobs):
                t = time.perf_counter()
                await pool.evaluate(empty, ["x"])
                xs.append(time.perf_counter() - t)
            latency.append(common.median(xs))
            t = time.perf_counter()
            await pool.evaluate_many([(empty, ["x"])] * overhead_jobs)
            batch.append((time.perf_counter() - t) / overhead_jobs)
        stats = pool.stats()
    return {"startup_s": startup, "a_runs": a_runs, "b_per_check": b_per_check, "c_runs": c_runs,
            "reference": reference, "verdicts": verdicts, "latency_s": latency, "batch_per_job_s": batch,
            "workers": workers, "busy_s": stats["busy_s"], "isolation_degraded": stats["degraded"]}


def main(argv: list[str] | None = None) -> int:
    args = common.parser("python -m bench.pool", __doc__.split("\n")[0]).parse_args(argv)
    rounds = 10 if args.quick else 40
    sample = 24 if args.quick else 60
    overhead_jobs = 200 if args.quick else 500
    jobs = make_jobs(rounds)
    n_checks = sum(len(i) for _, i in jobs)
    t_start = time.perf_counter()

    m = asyncio.run(measure(jobs, sample, overhead_jobs))
    a_runs, b_per_check, c_runs = m["a_runs"], m["b_per_check"], m["c_runs"]
    a = n_checks / common.median(a_runs)
    b = 1.0 / common.median(b_per_check)
    c = n_checks / common.median(c_runs)
    agree = sum(x == y for ra, rc in zip(m["reference"], m["verdicts"]) for x, y in zip(ra, rc)) / n_checks
    pool = m
    ratios = {"vs_inprocess": c / a, "vs_subprocess": c / b}
    latency_us = common.median(pool["latency_s"]) * 1e6
    batch_us = common.median(pool["batch_per_job_s"]) * 1e6

    data = {
        "what": "checks/s of AutoIF-style verifiers: (a) unsafe in-process exec + signal.alarm per check, "
                "(b) new interpreter per check (sampled, extrapolated), (c) SandboxPool.evaluate_many; "
                "medians of 3 runs each, the three interleaved in each round. per_job_overhead_us: median round trip of a 1-input empty job "
                "sent alone; batch_per_job_us: the same jobs sent 'all at once', wall time / jobs.",
        "quick": args.quick,
        "config": {"verifiers": len(VERIFIERS), "jobs": len(jobs), "inputs_per_job": INPUTS_PER_JOB,
                   "checks_per_run": n_checks, "subprocess_sample": sample, "repeats": REPEATS,
                   "pool_workers": pool["workers"], "overhead_jobs": overhead_jobs},
        "checks_per_s": {"inprocess": a, "subprocess": b, "pool": c},
        "runs": {"inprocess_s": a_runs, "subprocess_s_per_check": b_per_check, "pool_s": c_runs},
        "per_job_overhead_us": latency_us,
        "batch_per_job_us": batch_us,
        "pool_startup_s": pool["startup_s"],
        "verdict_agreement_with_inprocess": agree,
        "pool_degraded_layers": pool["isolation_degraded"],
        "targets": TARGETS,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = common.write_results("pool", data, ratios)

    print(common.table([
        ["method", "checks/s", "pool ratio"],
        ["(a) in-process + alarm (unsafe)", f"{a:,.0f}", f"{ratios['vs_inprocess']:.2f} (target >= 0.30)"],
        ["(b) interpreter per check", f"{b:,.1f}", f"{ratios['vs_subprocess']:.0f} (target >= 20)"],
        ["(c) SandboxPool.evaluate_many", f"{c:,.0f}", ""],
    ]))
    print(f"per-job overhead: {latency_us:,.0f} us round trip (1 job at a time), "
          f"{batch_us:,.0f} us/job in a batch; pool start {pool['startup_s']:.2f} s; "
          f"{pool['workers']} workers; verdict agreement {agree:.3f}")
    print(f"wrote {path.relative_to(common.ROOT)} (shared machine: figures vary with other load)")
    ok = all(ratios[k] >= v for k, v in TARGETS.items()) and agree == 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
