"""Verifiers: K sampled answers per instruction, each a Python `evaluate` function plus test cases.

The K answers come from one request with n=K, so the server computes the prompt once.
Functions and cases from all answers are pooled (de-duplicated) for cross-validation.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from engine.parsing import ParseError, ParsedVerifier, parse_verifier_answer
from engine.prompting import render
from engine.records import Case, Instruction, Verifier, VerifierDraft
from engine.stage import Context
from engine.stages.base import Sampling, ask, code_key, tally


def pool_answers(instruction: Instruction, parsed: Iterable[ParsedVerifier]) -> VerifierDraft:
    """One draft from several parsed answers: distinct functions, distinct cases, first-seen order."""
    functions: dict[str, Verifier] = {}
    cases: dict[tuple[str, bool], Case] = {}
    for p in parsed:
        functions.setdefault(code_key(p.code), Verifier(code=p.code))
        for case in p.cases:
            cases.setdefault((case.input, case.expected), case)
    return VerifierDraft(instruction=instruction, functions=tuple(functions.values()),
                         cases=tuple(cases.values()))


def parse_answers(texts: Iterable[tuple[str, str]], answer_drops: Counter, case_counts: Counter) -> list[ParsedVerifier]:
    """Parse (text, finish_reason) answers; failures land in `answer_drops` by reason."""
    parsed = []
    for text, finish in texts:
        try:
            p = parse_verifier_answer(text)
        except ParseError as exc:
            answer_drops["truncated" if finish == "length" else exc.reason] += 1
            continue
        case_counts["kept"] += len(p.cases)
        case_counts["bad_case"] += p.bad_cases
        parsed.append(p)
    return parsed


class VerifierStage:
    """Instruction -> VerifierDraft (K proposals pooled); dropped when no answer parses or no case exists.

    `sampling`: the verifier request (its n is K, the answers per instruction)."""

    name = "verifiers"

    def __init__(self, *, sampling: Sampling) -> None:
        self.sampling = sampling

    async def process(self, item: Instruction, ctx: Context) -> list[VerifierDraft]:
        answers = await ask(ctx, render("verifier", instruction=item.text), self.sampling)
        answer_drops: Counter[str] = Counter()
        case_counts: Counter[str] = Counter()
        parsed = parse_answers(((a.text, a.finish_reason) for a in answers), answer_drops, case_counts)
        tally(ctx, f"{self.name}.answer", len(parsed), answer_drops)
        tally(ctx, f"{self.name}.case", case_counts["kept"], Counter(bad_case=case_counts["bad_case"]))
        if not parsed:
            ctx.funnel.drop(self.name, "no_parsable_answer")
            return []
        draft = pool_answers(item, parsed)
        if not draft.cases:
            ctx.funnel.drop(self.name, "no_cases")
            return []
        return [draft]
