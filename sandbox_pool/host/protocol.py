"""What the pool puts on a worker's wire and what it accepts back.

Inputs and code go out as JSON; a result frame is checked against the wire it answers
(id, one verdict per input, known tags and status codes, scalar values) before any caller
sees it. Anything else raises Malformed, which fails that worker's job alone.
"""

from __future__ import annotations

import math

import orjson

from ..limits import Limits
from ..outcome import CODE_TO_STATUS, C_OK, OK_FALSE, OK_NONE, OK_TRUE, Outcome, one_line
from .scheduler import Wire

_TAG_OUTCOME = {"T": OK_TRUE, "F": OK_FALSE, "N": OK_NONE}
_SCALARS = (type(None), bool, int, float, str)
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# A result frame carries at most max_value_chars (JSON-escaped) and a one-line detail per input,
# plus the captured output; anything declaring more than this is not a result.
_FRAME_FIXED = 1 << 20


class Malformed(Exception):
    """A worker sent something that is not a well-formed answer."""


def max_frame(limits: Limits, n_inputs: int) -> int:
    """The largest frame an answer to wires of up to `n_inputs` inputs may announce."""
    return _FRAME_FIXED + 6 * limits.max_output_bytes + n_inputs * (6 * limits.max_value_chars + 4096)


def dumps(obj) -> bytes:
    """orjson, except that lone surrogates (possible in decoded LLM text) become U+FFFD."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return orjson.dumps(_unsurrogate(obj))  # still raises for what JSON cannot carry


def _unsurrogate(obj):
    if type(obj) is str:
        return obj.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(obj, (list, tuple)):
        return [_unsurrogate(x) for x in obj]
    if isinstance(obj, dict):
        return {_unsurrogate(k): _unsurrogate(v) for k, v in obj.items()}
    return obj


def _value(value):
    """A verdict value as sent by a supervisor: a JSON scalar, or a tagged non-finite float /
    integer beyond 64 bits."""
    if type(value) in _SCALARS:
        return value
    if type(value) is dict and len(value) == 1:
        if type(value.get("f")) is str and value["f"] in _NONFINITE:
            return _NONFINITE[value["f"]]
        digits = value.get("i")
        if type(digits) is str and digits.isascii() and digits.lstrip("-").isdigit() and digits.count("-") <= 1:
            try:
                return int(digits)
            except ValueError:  # beyond the int<->str digit limit: kept as its text
                return digits
    raise Malformed("invalid value")


def decode_result(msg: list, job: Wire) -> tuple[list, list, str, float, float]:
    """Check a result frame against the job it answers; raise Malformed on any mismatch.

    Returns (outcomes, the outcomes that came as records, output, elapsed, busy)."""
    if len(msg) != 6:
        raise Malformed("result of the wrong shape")
    job_id, tags, recs, output, elapsed, busy = msg
    if job_id != job.id:
        raise Malformed(f"answer for job {job_id!r} while job {job.id} was running")
    if (type(tags) is not str or type(recs) is not list or type(output) is not str
            or type(elapsed) not in (int, float) or type(busy) not in (int, float)):
        raise Malformed("result fields of the wrong types")
    if len(tags) != job.n or tags.count("R") != len(recs):
        raise Malformed(f"{len(tags)} verdicts for {job.n} inputs")
    if sum(map(tags.count, "TFNR")) != len(tags):
        raise Malformed("unknown verdict tag")
    outcomes = list(map(_TAG_OUTCOME.get, tags))  # bare True/False/None verdicts; None for "R"
    decoded = []
    if recs:
        shared: dict = {}
        it = iter(recs)
        for i, tag in enumerate(tags):
            if tag != "R":
                continue
            rec = next(it)
            if type(rec) is not list or len(rec) != 3:
                raise Malformed("verdict record of the wrong shape")
            code, value, detail = rec
            if type(code) is not int or not 0 <= code < len(CODE_TO_STATUS) or type(detail) is not str:
                raise Malformed("invalid verdict record")
            if code == C_OK:
                o = Outcome("ok", _value(value), "")
            else:
                key = (code, detail)
                o = shared.get(key)
                if o is None:
                    o = shared[key] = Outcome(CODE_TO_STATUS[code], None, one_line(detail))
            outcomes[i] = o
            decoded.append(o)
    return outcomes, decoded, output, float(elapsed), float(busy)
