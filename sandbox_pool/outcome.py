"""Result types: one Outcome per input, a JobResult per (code, inputs) job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK = "ok"
TIMEOUT = "timeout"
MEMORY = "memory"
ERROR = "error"
CRASHED = "crashed"
REJECTED = "rejected"
BAD_RETURN = "bad_return"
STATUSES = (OK, TIMEOUT, MEMORY, ERROR, CRASHED, REJECTED, BAD_RETURN)

# Compact status codes used on the wire between the job process, its supervisor and the pool.
CODE_TO_STATUS = (OK, ERROR, MEMORY, BAD_RETURN, TIMEOUT, CRASHED)
C_OK, C_ERROR, C_MEMORY, C_BAD_RETURN, C_TIMEOUT, C_CRASHED = range(6)


def one_line(text: str, limit: int = 300) -> str:
    """`text` as one line of at most `limit` characters, as an Outcome's detail is."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    value: Any = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


class JobResult(list):
    """Outcomes of one job, in input order, plus its captured output and duration."""

    __slots__ = ("output", "elapsed_s")

    def __init__(self, outcomes=(), output: str = "", elapsed_s: float = 0.0):
        super().__init__(outcomes)
        self.output = output
        self.elapsed_s = elapsed_s

    def __repr__(self) -> str:
        return f"JobResult({list.__repr__(self)}, output={self.output!r}, elapsed_s={self.elapsed_s:.4f})"


# Immutable, so the common verdicts can be shared instead of rebuilt per check.
OK_TRUE = Outcome(OK, True)
OK_FALSE = Outcome(OK, False)
OK_NONE = Outcome(OK, None)
