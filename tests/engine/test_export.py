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


def test_query_level_pair_takes_a_plain_reply_when_no_sample_failed():
    plain = (ResponseRecord("Tea, warm, calm", 0.0, (), False, "length"),   # cut off: not a reject
             ResponseRecord("Tea, hot", 0.0, (), False, "stop"))
    r = result(response("good", 1.0, 9), response("half", 0.5))
    [pair] = query_pairs([QueryResult(r.task, r.responses, r.model, plain)], OPTS)
    assert (pair.chosen, pair.rejected) == ("good", "Tea, hot")
    assert pair.provenance["rejected_source"] == "plain" and pair.provenance["rejected_pass_rate"] == 0.0
    # a failing sample is preferred to the plain reply
    r = result(response("good", 1.0, 9), response("zero", 0.0))
    [pair] = query_pairs([QueryResult(r.task, r.responses, r.model, plain)], OPTS)
    assert pair.rejected == "zero" and pair.provenance["rejected_source"] == "sample"
    # a plain reply that passes a function is no reject; and it is never an SFT answer
    r = result(response("good", 1.0, 9))
    followed = (ResponseRecord("tea is hot", 1.0, (), False, "stop"),)
    assert query_pairs([QueryResult(r.task, r.responses, r.model, followed)], OPTS) == []
    assert [e.chosen for e in sft_examples([QueryResult(r.task, r.responses, r.model, plain)], OPTS)] == ["good"]
    # stored and read back with its plain replies
    stored = QueryResult(r.task, r.responses, r.model, plain)
    assert QueryResult.from_dict(stored.to_dict(), {VERIFIED.id: VERIFIED}).plain == plain
    assert "plain" not in r.to_dict()


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
    # query-level pairs and instruction-level pairs (from test cases) are separate tables
    lf, trl = read(files["dpo_llamafactory"]), read(files["dpo_trl"])
    cases_lf, cases_trl = read(files["dpo_cases_llamafactory"]), read(files["dpo_cases_trl"])
    assert [r["provenance"]["level"] for r in lf + trl] == ["query", "query"]
    assert [r["provenance"]["level"] for r in cases_lf + cases_trl] == ["instruction"] * 4
    assert lf[0]["conversations"] == [{"from": "human", "value": "Describe tea.\n\nDo not use any commas."}]
    assert (lf[0]["chosen"], lf[0]["rejected"]) == ({"from": "gpt", "value": "good"}, {"from": "gpt", "value": "zero"})
    assert cases_trl[0] == {"prompt": [{"role": "user", "content": "Do not use any commas."}],
                            "chosen": [{"role": "assistant", "content": "a b"}],
                            "rejected": [{"role": "assistant", "content": "a, b"}],
                            "provenance": cases_lf[0]["provenance"]}
    assert all(r["provenance"]["config_hash"] == "h123" for r in alpaca + lf + cases_lf)
    [v] = read(files["verifiers"])
    assert v["instruction"] == "Do not use any commas." and v["functions"][0]["code"] == FN.code
    assert v["functions"][0]["accuracy"] == 1.0 and len(v["cases"]) == 5
    info = orjson.loads(files["dataset_info"].read_bytes())
    assert info["autoif_dpo_cases_llamafactory"]["file_name"] == "dpo_cases_llamafactory.jsonl"
    assert info["autoif_sft_alpaca"]["columns"]["response"] == "output"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_every_file_has_one_schema_and_no_empty_file(tmp_path):
    """Rows of a file share their keys (provenance included), and a table without rows writes no
    file: load_dataset("json") infers a schema from the first rows and cannot read 0 bytes."""
    files = export(tmp_path, [VERIFIED], [result(response("good", 1.0, 9), response("zero", 0.0)),
                                          result(response("only", 1.0, 9), query="Plan.")], OPTS)
    for stem, path in files.items():
        if path.suffix == ".jsonl":
            rows = read(path)
            assert rows, stem
            assert len({orjson.dumps(_keys(r)) for r in rows}) == 1, stem
    # no pair at all: the DPO files are not written, and a stale one from before is removed
    (tmp_path / "dpo_trl.jsonl").write_text("old\n")
    files = export(tmp_path, [], [result(response("only", 1.0, 9))], OPTS)
    assert "dpo_trl" not in files and not (tmp_path / "dpo_trl.jsonl").exists()
    assert all(p.stat().st_size > 0 for p in tmp_path.iterdir())


def _keys(value):
    """The shape of a JSON value: its keys, nested, without the values."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return type(value).__name__ if value is not None else "null"


def test_file_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files = export(tmp_path / "a", [VERIFIED], [result(response("good", 1.0, 9))], OPTS)
        assert {p.stat().st_mode & 0o777 for p in files.values()} == {0o644}
        os.umask(0o027)
        files = export(tmp_path / "b", [VERIFIED], [result(response("good", 1.0, 9))], OPTS)
        assert {p.stat().st_mode & 0o777 for p in files.values()} == {0o640}
    finally:
        os.umask(old)


def test_export_options_from_config_and_formats(tmp_path):
    cfg = Config.from_flat(model="mm", export_formats=["trl"], export_dpo=False, parquet=False)
    opts = ExportOptions.from_config(cfg)
    assert opts.config_hash == cfg.config_hash() and opts.model == "mm"
    files = export(tmp_path, [], [result(response("good", 1.0, 9))], opts)
    assert sorted(files) == ["dataset_info", "sft_trl"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("disk trouble")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert read(path) == [{"a": 1}] and os.listdir(tmp_path) == ["x.jsonl"]


def test_parquet_beside_every_jsonl(tmp_path):
    import pyarrow.parquet as pq                                    # a dependency, never skipped
    assert pyarrow_available()
    files = export(tmp_path, [VERIFIED], [result(response("good", 1.0, 9), response("zero", 0.0))], OPTS)
    table = pq.read_table(files["sft_alpaca.parquet"])
    assert table.column("output").to_pylist() == ["good"]
    assert pq.read_table(files["dpo_trl.parquet"]).num_rows == 1
    assert pq.read_table(files["dpo_cases_trl.parquet"]).num_rows == 2
    assert pq.read_table(files["verifiers.parquet"]).num_rows == 1


def test_parquet_holds_what_the_rows_hold(tmp_path):
    """Parquet is read from the JSONL just written (Arrow's JSON reader, no pandas import); it
    must hold exactly what converting the rows does, and a text that looks like a date stays text."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    dated = result(response("2024-05-01", 1.0, 9), response("zero", 0.0))
    files = export(tmp_path, [VERIFIED], [result(response("good", 1.0, 9), response("zero", 0.0)), dated], OPTS)
    parquet = [k for k in files if k.endswith(".parquet")]
    assert len(parquet) >= 6
    for key in parquet:
        rows = read(files[key.removesuffix(".parquet")])
        assert pq.read_table(files[key]).equals(pa.Table.from_pylist(rows)), key
    only_date = export(tmp_path / "d", [], [dated], OPTS)
    column = pq.read_table(only_date["sft_alpaca.parquet"]).column("output")
    assert column.type == pa.string() and column.to_pylist() == ["2024-05-01"]
