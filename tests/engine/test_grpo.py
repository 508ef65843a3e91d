"""GRPO prompt files as Parquet beside the JSONL: the copy verl's RLHFDataset can load.

verl loads train files with `datasets.load_dataset("parquet" | "json", data_files=...)` by
extension and refuses any other (volcengine/verl b178a3cd56f58b2d502255daba591e92833930a7,
verl/utils/dataset/rl_dataset.py, `_read_files_and_tokenize`); its reward managers read
`data_source`, `reward_model["ground_truth"]` and the chat messages under `prompt`.
No network: the datasets library is told it is offline before it is imported.
"""
import os

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402  (after the offline switches: the library reads them on import)
import orjson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from engine.grpo import GrpoOptions, export_grpo, grpo_schema  # noqa: E402
from engine.records import (Instruction, Query, QueryTask, SampledPrompt, Verifier,  # noqa: E402
                            VerifiedInstruction)

FN = Verifier("def evaluate(response):\n    return ',' not in response\n")
FN2 = Verifier("def evaluate(response):\n    return response.isupper()\n")
COMMAS = VerifiedInstruction(Instruction("Do not use any commas."), ((FN, 1.0),), ())
UPPER = VerifiedInstruction(Instruction("Answer in capitals."), ((FN, 1.0), (FN2, 0.5)), ())


def sampled(inst, query, rates, model="default"):
    q = Query(query)
    task = QueryTask(inst, q.id, query, f"{query}\n\n{inst.instruction.text}")
    return SampledPrompt(task, tuple(rates), model)


SAMPLED = [
    sampled(COMMAS, "Describe tea.", (1.0, 0.0, 1.0, 0.0)),          # mixed
    sampled(COMMAS, "Describe rain.", (1.0, 1.0, 1.0, 1.0)),         # every sample passes: 1 (int-like)
    sampled(UPPER, "Name a river: \u00e9, \u4e2d, \U0001f600.", (0.5, 0.0), "served"),   # none passes
    sampled(UPPER, "Say hi.", (1.0, 0.0, 0.0), "m2"),
]


def read_jsonl(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def summary(tmp_path):
    return export_grpo(tmp_path, SAMPLED, GrpoOptions(config_hash="h1", model="served-model"))


def test_parquet_rows_equal_the_jsonl_rows(summary):
    for stem in ("grpo_prompts", "grpo_prompts_mixed"):
        rows = read_jsonl(summary.files[stem])
        assert rows, stem
        table = pq.read_table(summary.files[f"{stem}.parquet"])
        assert table.schema.equals(grpo_schema())        # the one schema, every file
        assert table.to_pylist() == rows
        loaded = datasets.load_dataset("parquet", data_files=str(summary.files[f"{stem}.parquet"]),
                                       split="train", cache_dir=str(summary.files[stem].parent / "hf"))
        assert list(loaded) == rows
        assert list(loaded.column_names) == list(rows[0])


def test_rows_carry_what_verl_reads(summary):
    rows = pq.read_table(summary.files["grpo_prompts.parquet"]).to_pylist()
    assert len(rows) == 4 and len(pq.read_table(summary.files["grpo_prompts_mixed.parquet"])) == 2
    for row in rows:
        [message] = row["prompt"]
        assert message["role"] == "user" and message["content"].endswith(
            ("Do not use any commas.", "Answer in capitals."))
        assert row["data_source"] == "autoif"
        assert row["reward_model"] == {"style": "rule", "ground_truth": row["instruction_id"]}
    assert {r["provenance"]["model"] for r in rows} == {"served-model", "served", "m2"}
    assert sorted(r["pass_rate"] for r in rows if r["instruction_id"] == COMMAS.instruction.id) == [0.5, 1.0]


def test_empty_band_still_writes_a_typed_parquet(tmp_path):
    """No mixed prompt: the mixed Parquet file has no rows and the same schema."""
    summary = export_grpo(tmp_path, SAMPLED[1:3], GrpoOptions())
    assert summary.mixed == 0 and read_jsonl(summary.files["grpo_prompts_mixed"]) == []
    empty = pq.read_table(summary.files["grpo_prompts_mixed.parquet"])
    assert empty.num_rows == 0 and empty.schema.equals(grpo_schema())


def test_parquet_off_writes_jsonl_only(tmp_path):
    summary = export_grpo(tmp_path, SAMPLED, GrpoOptions(parquet=False))
    assert set(summary.files) == {"grpo_prompts", "grpo_prompts_mixed"}
    assert not list(tmp_path.glob("*.parquet"))
