"""Cross-validation of functions against cases (the AutoIF filtering rules).

All functions x all cases of one instruction run in ONE executor batch. Then:
- a function whose outcomes are all "rejected" did not compile / failed the precheck: removed;
- a case is kept when MORE than `case_agreement` of the compiling functions return its expected bool;
- a function is kept when its accuracy on the kept cases is MORE than `function_accuracy`;
- the instruction survives with at least `min_cases` cases and `min_functions` functions,
  and (with `two_sided`) only if its kept cases expect True at least once AND False at least
  once: agreement on one side alone is no evidence (a constant function passes it). For the
  same reason a function must then be right on at least one case of each side: with one
  passing and two failing cases kept, `return False` scores 0.67.
- with minimal pairs (cases tagged `Case.pair`, engine.stages.pairs): a function wrong on
  either side of a pair whose two sides were both kept is dropped, however accurate it is
  overall. Such a pair differs only in the constraint, so a function that misses it is keyed
  on something else: agreeing with the other cases is no evidence then, since those differ
  in side features as well.
An error, a timeout or a non-bool return counts as a wrong answer.

With `probes` (the audit's degenerate texts, engine.stages.audit.probe_inputs) each function's
job also runs them, after the cases: one fork per function instead of two, and the audit
reads the verdicts from the record. They take no part in the judgement.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from engine.config import Config
from engine.records import Case, Instruction, Query, Verifier, VerifiedInstruction, VerifierDraft
from engine.stage import Context
from engine.stages.audit import probe_inputs
from engine.stages.base import code_key, outcome_bool, tally
from engine.stages.queries import run_queries
from sandbox_pool import Outcome
from sandbox_pool.outcome import REJECTED


@dataclass
class CrossValVerdict:
    """What cross-validation decided for one instruction (reason set when it is dropped)."""

    functions: list[tuple[Verifier, float]]
    cases: list[Case]
    function_drops: Counter
    case_drops: Counter
    reason: str | None = None
    pairs: int = 0                       # minimal pairs among the cases
    pairs_kept: int = 0                  # ... with both sides kept


def kept_pairs(cases: Sequence[Case], kept: Sequence[int]) -> tuple[int, list[tuple[int, int]]]:
    """(minimal pairs among `cases`, index pairs of those whose two sides are both in `kept`)."""
    sides: dict[str, list[int]] = {}
    for j, case in enumerate(cases):
        if case.pair:
            sides.setdefault(case.pair, []).append(j)
    whole = {tag: js for tag, js in sides.items()
             if len(js) == 2 and cases[js[0]].expected != cases[js[1]].expected}
    kept_set = set(kept)
    return len(whole), [(a, b) for a, b in whole.values() if a in kept_set and b in kept_set]


def _distinct(draft: VerifierDraft) -> tuple[list[Verifier], list[Case], int, int]:
    funcs: dict[str, Verifier] = {}
    cases: dict[tuple[str, bool], Case] = {}
    for f in draft.functions:
        funcs.setdefault(code_key(f.code), f)
    for c in draft.cases:
        cases.setdefault((c.input, c.expected), c)
    return (list(funcs.values()), list(cases.values()),
            len(draft.functions) - len(funcs), len(draft.cases) - len(cases))


def judge(functions: Sequence[Verifier], cases: Sequence[Case], results: Sequence[Sequence[Outcome]],
          case_agreement: float, function_accuracy: float,
          min_functions: int = 1, min_cases: int = 1, two_sided: bool = False) -> CrossValVerdict:
    """Apply the rules to executor results (results[i][j]: function i on case j)."""
    fdrops: Counter[str] = Counter()
    cdrops: Counter[str] = Counter()
    answers: list[tuple[Verifier, list[bool | None]]] = []
    for f, outcomes in zip(functions, results):
        if not outcomes or all(o.status == REJECTED for o in outcomes):
            fdrops["not_compiling"] += 1
        else:
            answers.append((f, [outcome_bool(o) for o in outcomes]))
    if not answers:
        cdrops["no_function_compiles"] += len(cases)
        return CrossValVerdict([], [], fdrops, cdrops, "no_function_compiles", kept_pairs(cases, [])[0])

    kept_cases: list[int] = []
    for j, case in enumerate(cases):
        agree = sum(1 for _, vals in answers if vals[j] is not None and vals[j] == case.expected)
        if agree / len(answers) > case_agreement:
            kept_cases.append(j)
        else:
            cdrops["low_agreement"] += 1
    n_pairs, pairs = kept_pairs(cases, kept_cases)
    if len(kept_cases) < min_cases:
        fdrops["no_kept_cases"] += len(answers)
        return CrossValVerdict([], [], fdrops, cdrops, "no_case_agreed", n_pairs, len(pairs))
    if two_sided and len({cases[j].expected for j in kept_cases}) < 2:
        fdrops["one_sided_cases"] += len(answers)
        cdrops["one_sided"] += len(kept_cases)
        return CrossValVerdict([], [], fdrops, cdrops, "one_sided", n_pairs, len(pairs))

    kept_functions: list[tuple[Verifier, float]] = []
    for f, vals in answers:
        right_on = [cases[j].expected for j in kept_cases
                    if vals[j] is not None and vals[j] == cases[j].expected]  # sides it got right
        accuracy = len(right_on) / len(kept_cases)
        if accuracy <= function_accuracy:
            fdrops["low_accuracy"] += 1
        elif two_sided and len(set(right_on)) < 2:
            fdrops["one_sided_function"] += 1
        elif any(vals[j] != cases[j].expected for pair in pairs for j in pair):
            fdrops["missed_pair"] += 1
        else:
            kept_functions.append((f, accuracy))
    reason = "no_function_accurate" if len(kept_functions) < min_functions else None
    return CrossValVerdict(kept_functions, [cases[j] for j in kept_cases], fdrops, cdrops, reason,
                           n_pairs, len(pairs))


class CrossValStage:
    """VerifierDraft -> VerifiedInstruction (kept functions with their accuracy, kept cases).
    The thresholds are the rules of the module docstring."""

    name = "crossval"

    @classmethod
    def from_config(cls, cfg: Config, queries: Sequence[Query] | None = None) -> CrossValStage:
        c = cfg.crossval
        # the audit's probes, run in the same fork as the cases
        probes = functools.partial(probe_inputs, queries=run_queries(cfg, queries)) if cfg.audit.enabled else None
        return cls(case_agreement=c.case_agreement, function_accuracy=c.function_accuracy,
                   min_functions=c.min_functions, min_cases=c.min_cases, two_sided=c.two_sided,
                   probes=probes)

    def __init__(self, *, case_agreement: float, function_accuracy: float, min_functions: int = 1,
                 min_cases: int = 1, two_sided: bool = True,
                 probes: Callable[[Instruction], list[str]] | None = None) -> None:
        self.probes = probes
        self.two_sided = two_sided
        self.case_agreement = case_agreement
        self.function_accuracy = function_accuracy
        self.min_functions = min_functions
        self.min_cases = min_cases

    async def process(self, item: VerifierDraft, ctx: Context) -> list[VerifiedInstruction]:
        functions, cases, dup_functions, dup_cases = _distinct(item)
        if not functions or not cases:
            ctx.funnel.drop(self.name, "no_functions" if not functions else "no_cases")
            return []
        inputs = [c.input for c in cases]
        probes = self.probes(item.instruction) if self.probes else []
        # Urgent: a surviving instruction unlocks back-translation and all its queries.
        results = await ctx.executor.evaluate_many([(f.code, inputs + probes) for f in functions], urgent=True)
        n = len(cases)
        verdict = judge(functions, cases, [r[:n] for r in results], self.case_agreement, self.function_accuracy,
                        self.min_functions, self.min_cases, self.two_sided)
        verdict.function_drops["duplicate"] += dup_functions
        verdict.case_drops["duplicate"] += dup_cases
        tally(ctx, f"{self.name}.function", len(verdict.functions), verdict.function_drops)
        tally(ctx, f"{self.name}.case", len(verdict.cases), verdict.case_drops)
        if verdict.pairs:
            tally(ctx, f"{self.name}.pair", verdict.pairs_kept,
                  Counter(side_dropped=verdict.pairs - verdict.pairs_kept))
        if verdict.reason:
            ctx.funnel.drop(self.name, verdict.reason)
            return []
        kept = {f.id for f, _ in verdict.functions}
        probe_verdicts = tuple((f.id, tuple(outcome_bool(o) for o in r[n:]))
                               for f, r in zip(functions, results) if f.id in kept) if probes else ()
        return [VerifiedInstruction(instruction=item.instruction, functions=tuple(verdict.functions),
                                    cases=tuple(verdict.cases), probe_verdicts=probe_verdicts)]
