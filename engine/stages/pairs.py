"""Minimal pairs: test cases that differ from another case only in what the constraint is about.

Replies written to obey a constraint and plain replies differ in much more than the constraint
(length, topic, punctuation). A function keyed on such a side feature agrees with every one of
them: for "put your entire reply inside double quotation marks", a function testing "no single
quote" passes quoted replies that happen to have no apostrophe and fails plain ones that have
one. So each case is also edited by the LLM, as little as it can, to the other side: a reply
that obeys the constraint (expected True) is edited to break it (expected False), one that does
not (expected False) to obey it (expected True). Both sides carry one tag (`Case.pair`) and
enter cross-validation like every case; there a function wrong on either side of a pair whose
two sides are both kept is dropped (engine.stages.crossval).

An edit is rejected, and counted by reason, when it is empty, cut off at the token limit, equal
to the case (nothing changed), or when it changes MORE than `max_change` of the text: one minus
difflib's character-level similarity ratio. A rewrite changes side features too, which is what
the pair is there to hold still.
"""
from __future__ import annotations

import difflib
from collections import Counter

from engine.prompting import render
from engine.records import Case, content_id
from engine.roles import CODER
from engine.stage import Context
from engine.stages.base import Sampling, ask

# the edit asked of a case, by its expected verdict: obeys -> break it; does not -> obey it
EDIT_PROMPTS = {True: "pair_break", False: "pair_meet"}
REJECT_REASONS = ("empty", "truncated", "equal_sides", "too_large_change")


def change_share(a: str, b: str) -> float:
    """The share of the text an edit changed: 0 for equal texts, near 1 for unrelated ones."""
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def pair_flaw(original: str, edited: str, max_change: float) -> str | None:
    """Why (original, edited) is no minimal pair, None when it is one."""
    if not edited.strip():
        return "empty"
    if edited.strip() == original.strip():
        return "equal_sides"
    if change_share(original, edited) > max_change:
        return "too_large_change"
    return None


def pair_tag(original: Case, edited: str) -> str:
    return content_id("pair", original.input, original.expected, edited)


class MinimalPairs:
    """Asks one edit per case and makes the pair; `sampling`: the edit request (its n is 1)."""

    def __init__(self, *, sampling: Sampling, max_change: float) -> None:
        self.sampling = sampling
        self.max_change = max_change

    async def pair(self, ctx: Context, instruction: str, case: Case, drops: Counter) -> list[Case]:
        """[case, its edit] tagged as one pair, or [case] alone when the edit is rejected
        (its reason counted in `drops`)."""
        # the writer of test cases makes the edit (a case is what it writes)
        answers = await ask(ctx, render(EDIT_PROMPTS[case.expected], instruction=instruction, reply=case.input),
                            self.sampling, role=CODER)
        if not answers:
            drops["empty"] += 1
            return [case]
        edited = answers[0].text.strip()
        flaw = "truncated" if answers[0].finish_reason == "length" else pair_flaw(case.input, edited, self.max_change)
        if flaw:
            drops[flaw] += 1
            return [case]
        tag = pair_tag(case, edited)
        return [Case(case.input, case.expected, pair=tag), Case(edited, not case.expected, pair=tag)]
