"""Precision export (config.precision_export): only responses that every kept function the audit
did not flag passes."""
from pathlib import Path

import orjson

from engine.config import Config
from engine.export import ExportOptions, count_precision, export, query_pairs, sft_examples
from engine.records import (Case, FunctionResult, Instruction, QueryResult, QueryTask, ResponseRecord, Verifier,
                            VerifiedInstruction, VerifierAudit)
from engine.stage import Funnel

A, B, C = (Verifier(f"def evaluate(response):\n    return {e}\n")
           for e in ("',' not in response", "response.count(',') == 0", "True"))
FUNCTIONS = ((A, 1.0), (B, 1.0), (C, 0.75))


def instruction(audits=()):
    return VerifiedInstruction(Instruction("Do not use any commas."), FUNCTIONS,
                               (Case("a b", True), Case("a, b", False)), audits=audits)


def response(text, passes, score=9):
    """`passes`: the functions that pass it."""
    results = tuple(FunctionResult(f.id, "ok", f in passes) for f, _ in FUNCTIONS)
    rate = sum(r.passed for r in results) / len(results)
    return ResponseRecord(text, rate, results, rate > 0.5, "stop", score)


def result(inst, *responses, query="Describe tea."):
    return QueryResult(QueryTask(inst, "q-" + query, query, f"{query}\n\nDo not use any commas."),
                       tuple(responses), "m")


def chosen(results, **opts):
    return [e.chosen for e in sft_examples(results, ExportOptions(**opts))]


def test_precision_mode_exports_only_responses_every_unflagged_function_passes():
    inst = instruction()
    two_of_three = response("two of three pass", {A, C}, score=10)   # scored best, kept by the majority rule
    all_three = response("all pass", {A, B, C}, score=8)
    r = result(inst, two_of_three, all_three)
    assert chosen([r]) == ["two of three pass"]
    assert chosen([r], precision=True) == ["all pass"]
    # a prompt without such a response has no SFT answer, and no DPO chosen reply
    only_majority = result(inst, two_of_three, response("none", set()), query="Name a tea.")
    assert chosen([only_majority], precision=True) == []
    assert [p.chosen for p in query_pairs([only_majority], ExportOptions())] == ["two of three pass"]
    assert query_pairs([only_majority], ExportOptions(precision=True)) == []
    # the funnel row counts the prompts it left without an answer
    funnel = Funnel()
    count_precision([r, only_majority], ExportOptions(precision=True), funnel)
    assert funnel.to_dict()["export.precision"] == {"in": 2, "kept": 1, "out": 1,
                                                    "dropped": {"not_every_function": 1}}
    count_precision([r, only_majority], ExportOptions(), empty := Funnel())
    assert empty.to_dict() == {}                                      # off: no row


def test_precision_mode_ignores_functions_the_audit_flagged():
    # C accepts the degenerate probes: its verdict does not count, B's does
    inst = instruction(audits=(VerifierAudit(A.id), VerifierAudit(B.id), VerifierAudit(C.id, ("empty",), True)))
    r = result(inst, response("A and B pass", {A, B}, score=8), response("A and C pass", {A, C}, score=10))
    assert chosen([r], precision=True) == ["A and B pass"]
    # every function flagged: nothing vouches for a response
    flagged = instruction(audits=tuple(VerifierAudit(f.id, ("empty",), True) for f, _ in FUNCTIONS))
    assert chosen([result(flagged, response("all pass", {A, B, C}))], precision=True) == []


def test_precision_export_setting_reaches_the_files(tmp_path: Path):
    inst = instruction()
    r = result(inst, response("two of three pass", {A, C}, score=10), response("all pass", {A, B, C}, score=8))
    for flag, expected in ((False, "two of three pass"), (True, "all pass")):
        opts = ExportOptions.from_config(Config.from_flat(precision_export=flag, parquet=False))
        files = export(tmp_path / str(flag), [inst], [r], opts)
        [row] = [orjson.loads(line) for line in files["sft_alpaca"].read_bytes().splitlines()]
        assert row["output"] == expected
    # the setting is hashed only when on: configs without it keep their hash
    assert Config.from_flat(precision_export=False).config_hash() == Config().config_hash()
    assert Config.from_flat(precision_export=True).config_hash() != Config().config_hash()
