"""Conflict detection between two verified instructions, by execution first.

Two constraints conflict when no text can meet both. The sandbox looks for a witness: each
instruction's kept functions run on the texts known to meet the other (its expected-True
cases) and on joins of one's cases with the other's (a text that opens as one asks and closes
as the other asks meets both). A text meets an instruction by the usual rule: more than
`pass_threshold` of its functions pass it. A pair with a witness is compatible. A pair
without one is only suspect: the texts were written for one constraint, not to meet both.
An LLM judge then confirms (prompts/conflict.txt); the judge alone never makes a conflict, and
a verdict it does not give plainly confirms nothing.
"""
from __future__ import annotations

from typing import Sequence

from engine.parsing import parse_conflict
from engine.prompting import render
from engine.records import ConflictPair, VerifiedInstruction
from engine.roles import JUDGE
from engine.stage import Context
from engine.stages.base import Sampling, ask, outcome_bool

JOINED_PER_SIDE = 3    # cases of each side joined with the other's (both orders)


def witness_texts(a: VerifiedInstruction, b: VerifiedInstruction) -> list[str]:
    """Candidate texts for meeting both: each side's passing cases, and joins of the two."""
    pa = [c.input for c in a.cases if c.expected]
    pb = [c.input for c in b.cases if c.expected]
    joined = [f"{x}\n\n{y}" for x in pa[:JOINED_PER_SIDE] for y in pb[:JOINED_PER_SIDE]]
    joined += [f"{y}\n\n{x}" for x in pa[:JOINED_PER_SIDE] for y in pb[:JOINED_PER_SIDE]]
    return list(dict.fromkeys(pa + pb + joined))


def meets(verdicts: Sequence[Sequence[bool | None]], n_texts: int, pass_threshold: float) -> list[bool]:
    """Per text: whether more than `pass_threshold` of the functions (rows) returned True."""
    if not verdicts:
        return [False] * n_texts
    return [sum(v[j] is True for v in verdicts) / len(verdicts) > pass_threshold for j in range(n_texts)]


class ConflictCheck:
    """Whether two verified instructions conflict; counts in funnel rows `compose.pair` (every
    pair checked: kept when compatible) and `compose.suspect` (pairs the sandbox found no
    witness for: kept when the judge clears them)."""

    def __init__(self, *, pass_threshold: float, judge: Sampling) -> None:
        self.pass_threshold = pass_threshold
        self.judge = judge

    async def check(self, a: VerifiedInstruction, b: VerifiedInstruction, ctx: Context) -> ConflictPair | None:
        """The conflict between `a` and `b`, or None when they are compatible."""
        texts = witness_texts(a, b)
        fa, fb = a.verifiers, b.verifiers
        results = await ctx.executor.evaluate_many([(f.code, texts) for f in (*fa, *fb)], urgent=True)
        bools = [[outcome_bool(o) for o in r] for r in results]
        meet_a = meets(bools[:len(fa)], len(texts), self.pass_threshold)
        meet_b = meets(bools[len(fa):], len(texts), self.pass_threshold)
        f = ctx.funnel
        f.count_in("compose.pair")
        if any(x and y for x, y in zip(meet_a, meet_b)):
            f.count_kept("compose.pair")
            f.count_out("compose.pair")
            return None
        f.count_in("compose.suspect")
        answers = await ask(ctx, render("conflict", a=a.instruction.text, b=b.instruction.text), self.judge,
                            role=JUDGE)
        verdict = parse_conflict(answers[0].text) if answers else None
        if verdict is not True:
            f.count_kept("compose.suspect")
            f.count_out("compose.suspect")
            f.count_kept("compose.pair")
            f.count_out("compose.pair")
            return None
        f.drop("compose.suspect", "conflict")
        f.drop("compose.pair", "conflict")
        first, second = sorted((a, b), key=lambda v: v.instruction.id)
        return ConflictPair(first.instruction.id, second.instruction.id, first.instruction.text,
                            second.instruction.text, (first.family, second.family), len(texts))
