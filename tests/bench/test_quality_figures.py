"""bench.quality's statistics: the Wilson interval and the per-family aggregation of verdicts."""
from __future__ import annotations

import pytest

from bench.common import share, wilson
from bench.quality_figures import OVERALL, AuditVerdict, ProbeVerdict, RowVerdict, by_family, headline


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I
# (method 3, Wilson score), given to 4 decimals
@pytest.mark.parametrize("k, n, lower, upper", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_known_values(k, n, lower, upper):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(lower, abs=5e-5)
    assert hi == pytest.approx(upper, abs=5e-5)


def test_wilson_of_nothing_is_none_and_share_carries_counts():
    assert wilson(0, 0) is None
    assert share(0, 0) == {"k": 0, "n": 0, "rate": None, "lower95": None, "upper95": None}
    s = share(3, 4)
    assert (s["k"], s["n"], s["rate"]) == (3, 4, 0.75)
    assert s["lower95"] < 0.75 < s["upper95"]


A, B = "punctuation:no_comma", "startend:quotation"


def _verdicts():
    probes = [
        # family A: 3 probes the checker fails (1 accepted by the rule, 0 by precision mode),
        # 2 it passes (1 rejected by the rule, 2 by precision mode)
        ProbeVerdict(A, engine=True, all_unflagged=False, official=False),
        ProbeVerdict(A, engine=False, all_unflagged=False, official=False),
        ProbeVerdict(A, engine=False, all_unflagged=False, official=False),
        ProbeVerdict(A, engine=True, all_unflagged=False, official=True),
        ProbeVerdict(A, engine=False, all_unflagged=False, official=True),
        # family B: 1 failing probe accepted by both rules, 1 passing probe accepted by both
        ProbeVerdict(B, engine=True, all_unflagged=True, official=False),
        ProbeVerdict(B, engine=True, all_unflagged=True, official=True),
    ]
    rows = [RowVerdict(A, "pass_rate", True), RowVerdict(A, "pass_rate", True),
            RowVerdict(A, "all_unflagged", True),
            RowVerdict(B, "pass_rate", False), RowVerdict(B, "pass_rate", True), RowVerdict(B, "pass_rate", False),
            RowVerdict(B, "all_unflagged", True)]
    audits = [
        # A: flagged on two probes that both meet the constraint: a false flag
        AuditVerdict(A, flagged=True, accepted=2, accepted_failing=0, max_accepted=0),
        # A: clean
        AuditVerdict(A, flagged=False, accepted=0, accepted_failing=0, max_accepted=0),
        # B: flagged, one of its two accepted probes really fails: a right flag
        AuditVerdict(B, flagged=True, accepted=2, accepted_failing=1, max_accepted=0),
    ]
    return probes, rows, audits


def _counts(figure: dict) -> tuple[int, int]:
    return figure["k"], figure["n"]


def test_per_family_counts_and_rates_by_hand():
    figures = by_family(*_verdicts())
    assert list(figures) == [A, B, OVERALL]
    a, b, overall = figures[A], figures[B], figures[OVERALL]
    assert _counts(a["false_accept"]) == (1, 3) and a["false_accept"]["rate"] == pytest.approx(1 / 3)
    assert _counts(a["false_reject"]) == (1, 2)
    assert _counts(a["false_accept_all_unflagged"]) == (0, 3)
    assert _counts(a["false_reject_all_unflagged"]) == (2, 2)
    assert _counts(a["export_precision"]) == (2, 2)
    assert _counts(a["export_precision_all_unflagged"]) == (1, 1)
    assert _counts(a["audit_false_flag"]) == (1, 1)
    assert _counts(a["audit_accepted_meeting"]) == (2, 2)
    assert a["probes"] == 5 and a["audit_functions"] == 2

    assert _counts(b["false_accept"]) == (1, 1) and _counts(b["false_reject"]) == (0, 1)
    assert _counts(b["export_precision"]) == (1, 3)
    assert _counts(b["audit_false_flag"]) == (0, 1)
    assert _counts(b["audit_accepted_meeting"]) == (1, 2)

    assert _counts(overall["false_accept"]) == (2, 4)
    assert _counts(overall["false_reject"]) == (1, 3)
    assert _counts(overall["export_precision"]) == (3, 5)
    assert _counts(overall["export_precision_all_unflagged"]) == (2, 2)
    assert _counts(overall["audit_false_flag"]) == (1, 2)
    assert _counts(overall["audit_accepted_meeting"]) == (3, 4)
    assert overall["export_precision"]["lower95"] == pytest.approx(wilson(3, 5)[0])


def test_a_family_without_rows_has_empty_shares_and_headline_keeps_its_keys():
    probes, _, _ = _verdicts()
    figures = by_family(probes[:1], [], [])
    assert _counts(figures[A]["export_precision"]) == (0, 0)
    assert figures[A]["export_precision"]["rate"] is None
    ratios = headline(by_family(*_verdicts())[OVERALL])
    assert ratios["export_precision"] == pytest.approx(0.6)
    assert ratios["export_precision_lower95"] == pytest.approx(wilson(3, 5)[0])
    assert ratios["false_accept"] == pytest.approx(0.5)
    assert ratios["false_reject"] == pytest.approx(1 / 3)
    assert ratios["export_precision_all_unflagged"] == pytest.approx(1.0)
    assert ratios["audit_false_flag"] == pytest.approx(0.5)


def test_precision_mode_export_keeps_responses_every_unflagged_function_passes():
    from bench.quality import all_unflagged_sft, passes_all_unflagged, unflagged_ids
    from engine.export import ExportOptions, sft_examples
    from engine.records import (FunctionResult, Instruction, QueryResult, QueryTask, ResponseRecord,
                                VerifiedInstruction, Verifier, VerifierAudit)

    right, wrong, hacked = Verifier("def evaluate(r): return 1"), Verifier("def evaluate(r): return 2"), \
        Verifier("def evaluate(r): return 3")
    vi = VerifiedInstruction(Instruction("No commas."), ((right, 1.0), (wrong, 1.0), (hacked, 1.0)), (),
                             audits=(VerifierAudit(right.id), VerifierAudit(wrong.id),
                                     VerifierAudit(hacked.id, ("empty",), flagged=True)))
    assert unflagged_ids(vi) == {right.id, wrong.id}

    def response(text, *passing, score=9):
        results = tuple(FunctionResult(f.id, "ok", f in passing) for f in (right, wrong, hacked))
        return ResponseRecord(text, sum(f in passing for f in (right, wrong, hacked)) / 3, results,
                              passed=len(passing) >= 2, score=score)

    # 2 of 3 pass (the rule keeps it) but an unflagged function fails: precision mode drops it
    two_of_three = response("a reply of twelve words", right, hacked, score=10)
    all_clean = response("short", right, wrong)
    assert not passes_all_unflagged(two_of_three, unflagged_ids(vi))
    assert passes_all_unflagged(all_clean, unflagged_ids(vi))

    task = QueryTask(vi, "q1", "Say hi.", "Say hi. No commas.")
    task2 = QueryTask(vi, "q2", "Say bye.", "Say bye. No commas.")
    results = [QueryResult(task, (two_of_three, all_clean)), QueryResult(task2, (two_of_three,))]
    rows = all_unflagged_sft(results, {vi.instruction.id: vi}, ExportOptions(sft_per_query=1))
    assert [(r.provenance["query_id"], r.chosen) for r in rows] == [("q1", "short")]
    # the pass-rate rule exports the better-scored two_of_three for both queries
    assert [r.chosen for r in sft_examples(results, ExportOptions(sft_per_query=1))] == [two_of_three.text] * 2
    # a result whose instruction is not among the stored ones is judged by its task's own audits
    assert all_unflagged_sft(results, {}, ExportOptions(sft_per_query=1)) == rows
