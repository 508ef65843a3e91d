"""Every export file loads the way TRL and LLaMA-Factory load it: `datasets.load_dataset("json")`.

That loader infers the schema from the first block of rows and casts every later block to it,
so a file whose rows change shape part way (the query-level pairs after the instruction-level
ones, once) fails only at a realistic size. 100k results are written, then every JSONL file
is loaded. No network: the datasets library is told it is offline before it is imported.
"""
import os

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402  (after the offline switches: the library reads them on import)
import orjson  # noqa: E402

from engine.export import ExportOptions, export  # noqa: E402
from engine.records import (Case, FunctionResult, Instruction, QueryResult, QueryTask,  # noqa: E402
                            ResponseRecord, Verifier, VerifiedInstruction)

N_RESULTS = 100_000
N_INSTRUCTIONS = 500


def instructions() -> list[VerifiedInstruction]:
    out = []
    for i in range(N_INSTRUCTIONS):
        fns = tuple((Verifier(f"def evaluate(response):\n    return len(response) > {i + k}\n"), 1.0 - k / 8)
                    for k in range(1 + i % 3))
        cases = tuple(Case(f"case {i} {j}" * (1 + j % 3), j % 2 == 0) for j in range(2 + i % 5))
        out.append(VerifiedInstruction(Instruction(f"Write more than {i} characters.", "augment"), fns, cases))
    return out


def results(insts: list[VerifiedInstruction]) -> list[QueryResult]:
    out = []
    for n in range(N_RESULTS):
        inst = insts[n % len(insts)]
        fn = inst.functions[0][0]
        rs = [ResponseRecord(f"answer {n} " * (1 + n % 4), 1.0, (FunctionResult(fn.id, "ok", True),), True,
                             "stop", 8 + n % 3)]
        if n % 3:                    # two results in three also have a failing response: a DPO pair
            rs.append(ResponseRecord(f"bad {n}", 0.0, (FunctionResult(fn.id, "ok", False),), False, "stop", None))
        task = QueryTask(inst, f"q{n}", f"query {n}", f"query {n}\n\n{inst.instruction.text}")
        out.append(QueryResult(task, tuple(rs), "served-model"))
    return out


def test_100k_rows_load_with_datasets(tmp_path):
    insts = instructions()
    files = export(tmp_path / "exports", insts, results(insts),
                   ExportOptions(model="served-model", config_hash="abc", parquet=False))
    jsonl = {stem: path for stem, path in files.items() if path.suffix == ".jsonl"}
    assert set(jsonl) == {"sft_alpaca", "sft_sharegpt", "sft_trl", "dpo_llamafactory", "dpo_trl",
                          "dpo_cases_llamafactory", "dpo_cases_trl", "verifiers"}
    expected_rows = {"sft_alpaca": N_RESULTS, "sft_sharegpt": N_RESULTS, "sft_trl": N_RESULTS,
                     "dpo_llamafactory": N_RESULTS * 2 // 3, "dpo_trl": N_RESULTS * 2 // 3,
                     "verifiers": N_INSTRUCTIONS}
    cache = tmp_path / "hf-cache"
    for stem, path in jsonl.items():
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
        with open(path, "rb") as fh:
            lines = sum(1 for _ in fh)
        assert ds.num_rows == lines > 0, stem
        if stem in expected_rows:
            assert abs(ds.num_rows - expected_rows[stem]) <= 1, stem
        last = orjson.loads(path.read_bytes().splitlines()[-1])
        assert ds[-1] == last, stem                     # the last row reads back unchanged
    # LLaMA-Factory's dataset_info.json names every file in a format it reads (TRL's DPO
    # message lists are not one), and nothing that is not a training set
    info = orjson.loads(files["dataset_info"].read_bytes())
    assert {e["file_name"] for e in info.values()} == {
        "sft_alpaca.jsonl", "sft_sharegpt.jsonl", "sft_trl.jsonl", "dpo_llamafactory.jsonl",
        "dpo_cases_llamafactory.jsonl"}
