"""The roles an LLM plays in a run, so that each may run on its own server and model.

- writer: writes new instructions (augment);
- coder: writes verification functions, and test cases as JSON lists (json and lists styles);
- responder: the policy being trained: responses, the plain replies (query alone) and the
  replies written as test cases (`verifier_case_style` replies). The plain reply is one request
  shared by the verifier stage (its expected-False case) and the responses stage (a plain DPO
  reject) through the LLM cache, so it belongs to one role; the follow-the-instruction case
  reply is its pair, from the same model, so that the two cases differ in the constraint and
  not in whose style they are written in;
- judge: every judgement: the checkable filter, back-translation, NLI, scoring.

A role given no server or model of its own uses the run's (`servers`/`model`, or the server
the run starts).
"""
from __future__ import annotations

from typing import Callable, Iterable

WRITER, CODER, RESPONDER, JUDGE = "writer", "coder", "responder", "judge"
ROLES = (WRITER, CODER, RESPONDER, JUDGE)


def parse_assignments(entries: Iterable[str], check: Callable[[str], str | None]) -> dict[str, list[str]]:
    """`ROLE=VALUE` entries -> {role: [values, in order]}; raises ValueError naming the first bad
    entry. `check(value)` says why a value is wrong (None: it is fine)."""
    out: dict[str, list[str]] = {}
    for entry in entries:
        role, sep, value = entry.partition("=")
        role, value = role.strip(), value.strip()
        if not sep:
            raise ValueError(f"{entry!r}: expected ROLE=VALUE (roles: {', '.join(ROLES)})")
        if role not in ROLES:
            raise ValueError(f"{entry!r}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        problem = "empty value" if not value else check(value)
        if problem:
            raise ValueError(f"{entry!r}: {problem}")
        out.setdefault(role, []).append(value)
    return out


def unnamed(model: str) -> bool:
    """A model name that leaves the choice to the server ("default" or none)."""
    return model in ("", "default")
