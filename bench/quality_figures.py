"""bench.quality's figures from its verdicts, per constraint family and overall.

A family is one IFEval checker (its instruction id); every phrasing mapped to that checker
counts in it. Each figure is k of n with a Wilson 95% interval (bench.common.share):

  false_accept        probes the official checker fails that the instruction's kept functions
                      accept (pass-rate rule: more than pass_threshold of them return True)
  false_reject        probes the checker passes that the kept functions reject
  export_precision    exported SFT rows the checker passes, per export mode (EXPORT_MODES)
  audit_false_flag    flagged functions that would not be flagged if only the probes the
                      checker fails counted: the flag was raised by text that meets the constraint
  audit_accepted_meeting  audit probes a function accepted that the checker passes
                      (an acceptance the audit reads as hacking, but that was right)

The `_all_unflagged` variants of false accept / false reject use the precision-mode rule
instead: a probe is accepted when every kept function the audit did not flag accepts it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from bench.common import share

# pass_rate: the engine's rule (pass rate above the threshold);
# all_unflagged: every kept function the audit did not flag passes the response
EXPORT_MODES = ("pass_rate", "all_unflagged")
OVERALL = "overall"


@dataclass(frozen=True)
class ProbeVerdict:
    """One (instruction, probe text) pair: what the engine and the official checker said."""

    family: str
    engine: bool              # pass-rate rule over the kept functions
    all_unflagged: bool       # every kept, unflagged function accepts (False when none is unflagged)
    official: bool


@dataclass(frozen=True)
class RowVerdict:
    """One exported SFT row (in one export mode) and the official checker's verdict on it."""

    family: str
    mode: str
    official: bool


@dataclass(frozen=True)
class AuditVerdict:
    """One kept function's audit against the official checker on the audit's own probes."""

    family: str
    flagged: bool
    accepted: int             # audit probes the function accepted
    accepted_failing: int     # of those, probes the official checker fails
    max_accepted: int         # the audit flags a function that accepts more than this

    @property
    def false_flag(self) -> bool:
        return self.flagged and self.accepted_failing <= self.max_accepted


def _group(probes: list[ProbeVerdict], rows: list[RowVerdict], audits: list[AuditVerdict]) -> dict:
    fails = [p for p in probes if not p.official]
    passes = [p for p in probes if p.official]
    out = {
        "probes": len(probes),
        "false_accept": share(sum(p.engine for p in fails), len(fails)),
        "false_reject": share(sum(not p.engine for p in passes), len(passes)),
        "false_accept_all_unflagged": share(sum(p.all_unflagged for p in fails), len(fails)),
        "false_reject_all_unflagged": share(sum(not p.all_unflagged for p in passes), len(passes)),
    }
    for mode in EXPORT_MODES:
        mine = [r for r in rows if r.mode == mode]
        key = "export_precision" if mode == EXPORT_MODES[0] else f"export_precision_{mode}"
        out[key] = share(sum(r.official for r in mine), len(mine))
    flagged = [a for a in audits if a.flagged]
    out["audit_functions"] = len(audits)
    out["audit_false_flag"] = share(sum(a.false_flag for a in flagged), len(flagged))
    out["audit_accepted_meeting"] = share(sum(a.accepted - a.accepted_failing for a in audits),
                                          sum(a.accepted for a in audits))
    return out


def by_family(probes: Iterable[ProbeVerdict], rows: Iterable[RowVerdict],
              audits: Iterable[AuditVerdict]) -> dict[str, dict]:
    """{family: figures} for every family with any verdict, in name order, then OVERALL."""
    probes, rows, audits = list(probes), list(rows), list(audits)
    groups: dict[str, tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for i, items in enumerate((probes, rows, audits)):
        for item in items:
            groups[item.family][i].append(item)
    out = {family: _group(*groups[family]) for family in sorted(groups)}
    out[OVERALL] = _group(probes, rows, audits)
    return out


def headline(overall: dict) -> dict:
    """The result file's `ratios`: the overall rates, and the lower bounds of export precision."""
    out = {"export_precision": overall["export_precision"]["rate"],
           "export_precision_lower95": overall["export_precision"]["lower95"],
           "false_accept": overall["false_accept"]["rate"],
           "false_reject": overall["false_reject"]["rate"]}
    for mode in EXPORT_MODES[1:]:
        figure = overall[f"export_precision_{mode}"]
        out[f"export_precision_{mode}"] = figure["rate"]
        out[f"export_precision_{mode}_lower95"] = figure["lower95"]
    out["audit_false_flag"] = overall["audit_false_flag"]["rate"]
    return out
