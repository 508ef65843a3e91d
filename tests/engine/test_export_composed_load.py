"""A composing run's export files load the way TRL and LLaMA-Factory load them
(`datasets.load_dataset("json")`, which casts later blocks to the schema of the first): single-
and multi-constraint rows share one schema, with n_constraints and instruction_ids on every row.
GRPO files (JSONL and Parquet) keep their one schema with the list ground truth."""
import os

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402  (after the offline switches)
import orjson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from engine.export import ExportOptions, export  # noqa: E402
from engine.grpo import GrpoOptions, export_grpo, grpo_schema  # noqa: E402
from engine.records import (Case, FunctionResult, Instruction, QueryResult, QueryTask,  # noqa: E402
                            ResponseRecord, SampledPrompt, Verifier, VerifiedInstruction)

N_RESULTS = 30_000
N_INSTRUCTIONS = 60


def instructions() -> list[VerifiedInstruction]:
    return [VerifiedInstruction(Instruction(f"Write more than {i} characters."),
                                ((Verifier(f"def evaluate(response):\n    return len(response) > {i}\n"), 1.0),),
                                (Case(f"case {i}", True), Case("x", False)), family=("length", "case", "")[i % 3])
            for i in range(N_INSTRUCTIONS)]


def task(insts: list[VerifiedInstruction], n: int) -> QueryTask:
    inst = insts[n % len(insts)]
    # single-constraint rows fill the first blocks; composed ones come late, as a run makes them
    also = tuple(insts[(n + k) % len(insts)] for k in range(1, 1 + n % 3)) if n > N_RESULTS // 2 else ()
    text = "\n".join(c.instruction.text for c in (inst, *also))
    return QueryTask(inst, f"q{n}", f"query {n}", f"query {n}\n\n{text}", also=also)


def results(insts: list[VerifiedInstruction]) -> list[QueryResult]:
    out = []
    for n in range(N_RESULTS):
        t = task(insts, n)
        k = len(t.constraints)
        ok = tuple(FunctionResult(c.functions[0][0].id, "ok", True) for c in t.constraints)
        verdicts = (True,) * k if k > 1 else ()
        rs = [ResponseRecord(f"answer {n}", 1.0, ok, True, "stop", 9, verdicts)]
        if n % 2:
            miss = (False,) + (True,) * (k - 1) if k > 1 else ()
            rs.append(ResponseRecord(f"bad {n}", (k - 1) / k if k > 1 else 0.0, ok, False, "stop", None, miss))
        out.append(QueryResult(t, tuple(rs), "m"))
    return out


def test_composed_exports_load_with_datasets(tmp_path):
    insts = instructions()
    files = export(tmp_path / "exports", insts, results(insts),
                   ExportOptions(model="m", config_hash="abc", parquet=False, composed=True))
    cache = tmp_path / "hf-cache"
    for stem, path in files.items():
        if path.suffix != ".jsonl":
            continue
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        assert ds.num_rows == len(rows) > 0, stem
        assert "n_constraints" in ds.column_names and "instruction_ids" in ds.column_names, stem
        assert ds[-1] == rows[-1], stem
        assert all(r["n_constraints"] == len(r["instruction_ids"]) for r in rows), stem
    sft = [orjson.loads(line) for line in files["sft_trl"].read_bytes().splitlines()]
    assert {r["n_constraints"] for r in sft} == {1, 2, 3}


def test_composed_grpo_files_keep_one_schema(tmp_path):
    insts = instructions()
    sampled = [SampledPrompt(task(insts, n), (1.0, 0.5) if n % 2 else (0.0, 0.0), "m") for n in range(0, N_RESULTS, 50)]
    summary = export_grpo(tmp_path, sampled, GrpoOptions(config_hash="abc", composed=True, reward="all"))
    for stem in ("grpo_prompts", "grpo_prompts_mixed"):
        table = pq.read_table(summary.files[f"{stem}.parquet"])
        assert table.schema.equals(grpo_schema(composed=True)), stem
    rows = [orjson.loads(line) for line in summary.files["grpo_prompts"].read_bytes().splitlines()]
    assert all(r["reward_model"]["ground_truth"] == r["instruction_ids"] and r["reward_model"]["combine"] == "all"
               for r in rows)
    # a composed prompt's sample passes only when it meets every constraint
    composed = [r for r in rows if r["n_constraints"] > 1]
    assert composed and all(r["pass_rate"] in (0.0, 0.5) for r in composed)
    ds = datasets.load_dataset("json", data_files=str(summary.files["grpo_prompts"]), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == len(rows)
