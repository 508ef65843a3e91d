"""Records: deterministic content ids and lossless to_dict/from_dict through orjson."""
import orjson
import pytest

from engine.records import (RECORD_TYPES, BackTranslation, Case, ConflictPair, FunctionResult, Instruction, Query, QueryResult,
                            QueryTask, ResponseRecord, SampledPrompt, SeedBatch, Verifier, VerifiedInstruction,
                            VerifierAudit, VerifierDraft, record_from_dict)


def sample_result() -> QueryResult:
    inst = Instruction("Use no commas.", source="augment")
    fn = Verifier("def evaluate(response):\n    return ',' not in response\n")
    verified = VerifiedInstruction(inst, ((fn, 0.75),), (Case("a b", True), Case("a, b", False)),
                                   (BackTranslation(fn.id, "Avoid commas.", "entailment"),),
                                   (VerifierAudit(fn.id, ("empty",), True, 0.5),))
    task = QueryTask(verified, Query("Describe tea.").id, "Describe tea.", "Describe tea.\n\nUse no commas.")
    r = ResponseRecord("Tea is warm", 1.0, (FunctionResult(fn.id, "ok", True),), True, "stop", 9)
    return QueryResult(task, (r, ResponseRecord("Tea, warm", 0.0, (FunctionResult(fn.id, "ok", False),))), "m")


def test_ids_are_content_hashes():
    assert Instruction("Use no commas.").id == Instruction("  use NO   commas. ", source="augment").id
    assert Instruction("Use no commas.").id != Instruction("Use no periods.").id
    assert Verifier("x").id == Verifier("x").id != Verifier("y").id
    assert sample_result().id == sample_result().id
    assert Case("a", True).id != Case("a", False).id


def test_round_trip_every_record_type():
    result = sample_result()
    verified = result.task.instruction
    records = [
        result, verified, result.task, result.responses[0], result.responses[0].results[0],
        verified.instruction, verified.cases[0], verified.back_translations[0], verified.functions[0][0],
        Query("Describe tea."),
        SeedBatch(2, (Instruction("a b c"),), (Instruction("d e f"),)),
        VerifierDraft(verified.instruction, (Verifier("c"),), (Case("i", False),)),
        SampledPrompt(result.task, (1.0, 0.0), "m"),
        ConflictPair("a1", "b2", "Answer in 5 words.", "Write 3 paragraphs.", ("length", "format/structure"), 12),
    ]
    assert {type(r).__name__ for r in records} == set(RECORD_TYPES)
    for record in records:
        data = orjson.loads(orjson.dumps(record.to_dict()))
        back = record_from_dict(type(record).__name__, data, {verified.id: verified})
        assert back == record and back.id == record.id


def test_a_task_names_its_instruction_by_id():
    """Each instruction meets many queries: its functions and cases are not written with each."""
    result = sample_result()
    verified = result.task.instruction
    data = orjson.loads(orjson.dumps(result.to_dict()))
    assert data["task"]["instruction_id"] == verified.id and "instruction" not in data["task"]
    assert verified.functions[0][0].code not in orjson.dumps(data).decode()
    with pytest.raises(KeyError, match=verified.id):
        QueryResult.from_dict(data)                      # nothing to look it up in
    # a result stored before tasks named their instruction by id still loads
    old = {**data, "task": {**data["task"], "instruction": verified.to_dict()}}
    assert QueryResult.from_dict(old) == result


def test_with_score_changes_only_score():
    r = sample_result().responses[0]
    assert r.with_score(3).score == 3 and r.with_score(3).text == r.text and r.score == 9
