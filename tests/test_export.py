"""Export: SFT (alpaca, sharegpt, TRL), DPO at instruction and query level, provenance, atomic files."""
import os

import orjson
import pytest

from engine.config import Config
from engine.export import (ExportOptions, export, instruction_pairs, instructions_of, pyarrow_available,
                           query_pairs, sft_examples, write_jsonl)
from engine.records import (Case, FunctionResult, Instruction, QueryResult, QueryTask, ResponseRecord, Verifier,
                            VerifiedInstruction)

FN = Verifier("def evaluate(response):\n    return ',' not in response\n")
VERIFIED = VerifiedInstruction(Instruction("Do not use any commas."), ((FN, 1.0),),
                               (Case("a b", True), Case("a, b", False), Case("c d", True), Case("c, d", False),
                                Case("e f", True)))
OPTS = ExportOptions(model="m", config_hash="h123", score_min=8, dpo_pairs_per_instruction=5)


def response(text, rate, score=None):
    return ResponseRecord(text, rate, (FunctionResult(FN.id, "ok", rate > 0.5),), rate > 0.5, "stop", score)


def result(*responses, query="Describe tea."):
    task = QueryTask(VERIFIED, "q-" + query, query, f"{query}\n\nDo not use any commas.")
    return QueryResult(task, tuple(responses), "gen-model")


def read(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_sft_picks_best_usable_response():
    r = result(response("ok one", 1.0, 8), response("best one", 1.0, 10), response("low", 1.0, 5),
               response("unscorable", 1.0, 0), response("failed", 0.0))
    [ex] = sft_examples([r], OPTS)
    assert ex.chosen == "best one" and ex.prompt == "Describe tea.\n\nDo not use any commas."
    assert ex.provenance == {"level": "sft", "instruction_id": VERIFIED.instruction.id, "query_id": "q-Describe tea.",
                             "function_ids": [FN.id], "model": "gen-model", "config_hash": "h123",
                             "pass_rate": 1.0, "score": 10, "response_id": r.responses[1].id}
    two = sft_examples([r], ExportOptions(score_min=8, sft_per_query=2))
    assert [e.chosen for e in two] == ["best one", "ok one"]
    # scoring off: unscored verified responses are usable
    assert [e.chosen for e in sft_examples([result(response("plain", 1.0))], OPTS)] == ["plain"]


def test_query_level_pairs_need_a_zero_pass_reject():
    pair = query_pairs([result(response("good", 1.0, 9), response("half", 0.5), response("zero", 0.0))], OPTS)
    assert [(p.chosen, p.rejected) for p in pair] == [("good", "zero")]
    assert pair[0].provenance["level"] == "query" and pair[0].provenance["rejected_pass_rate"] == 0.0
    assert query_pairs([result(response("good", 1.0, 9), response("half", 0.5))], OPTS) == []
    assert query_pairs([result(response("low", 1.0, 3), response("zero", 0.0))], OPTS) == []


def test_instruction_level_pairs_from_cases():
    pairs = instruction_pairs([VERIFIED, VERIFIED], OPTS)                 # the same instruction twice: once
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("Do not use any commas.", "a b", "a, b"), ("Do not use any commas.", "c d", "c, d")]
    assert pairs[0].provenance["level"] == "instruction" and pairs[0].provenance["function_ids"] == [FN.id]
    assert len(instruction_pairs([VERIFIED], ExportOptions(dpo_pairs_per_instruction=1))) == 1


def test_export_writes_every_format(tmp_path):
    results = [result(response("good", 1.0, 9), response("zero", 0.0)),
               result(response("fine", 1.0, 8), query="Plan a trip.")]
    files = export(tmp_path, instructions_of(results), results, OPTS)
    alpaca = read(files["sft_alpaca"])
    assert [(r["instruction"], r["input"], r["output"]) for r in alpaca] == [
        ("Describe tea.\n\nDo not use any commas.", "", "good"), ("Plan a trip.\n\nDo not use any commas.", "", "fine")]
    assert read(files["sft_sharegpt"])[0]["conversations"] == [
        {"from": "human", "value": "Describe tea.\n\nDo not use any commas."}, {"from": "gpt", "value": "good"}]
    assert read(files["sft_trl"])[1]["messages"][1] == {"role": "assistant", "content": "fine"}
    lf = read(files["dpo_llamafactory"])
    trl = read(files["dpo_trl"])
    assert [r["provenance"]["level"] for r in lf] == ["instruction", "instruction", "query"]
    assert lf[2]["conversations"] == [{"from": "human", "value": "Describe tea.\n\nDo not use any commas."}]
    assert (lf[2]["chosen"], lf[2]["rejected"]) == ({"from": "gpt", "value": "good"}, {"from": "gpt", "value": "zero"})
    assert trl[0] == {"prompt": [{"role": "user", "content": "Do not use any commas."}],
                      "chosen": [{"role": "assistant", "content": "a b"}],
                      "rejected": [{"role": "assistant", "content": "a, b"}], "provenance": lf[0]["provenance"]}
    assert all(r["provenance"]["config_hash"] == "h123" for r in alpaca + lf)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_export_options_from_config_and_formats(tmp_path):
    cfg = Config(model="mm", export_formats=["trl"], export_dpo=False, parquet=False)
    opts = ExportOptions.from_config(cfg)
    assert opts.config_hash == cfg.config_hash() and opts.model == "mm"
    files = export(tmp_path, [], [result(response("good", 1.0, 9))], opts)
    assert sorted(files) == ["sft_trl"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("disk trouble")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert read(path) == [{"a": 1}] and os.listdir(tmp_path) == ["x.jsonl"]


@pytest.mark.skipif(not pyarrow_available(), reason="pyarrow not installed")
def test_parquet_when_pyarrow(tmp_path):
    import pyarrow.parquet as pq
    files = export(tmp_path, [VERIFIED], [result(response("good", 1.0, 9), response("zero", 0.0))], OPTS)
    table = pq.read_table(files["sft_alpaca.parquet"])
    assert table.column("output").to_pylist() == ["good"]
    assert pq.read_table(files["dpo_trl.parquet"]).num_rows == 3
