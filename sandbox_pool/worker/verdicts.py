"""The verdict log a job writes into shared memory, and its parser on the supervisor side.

Layout: one record per finished check, back to back, in a zero-filled region.
A bare True/False/None verdict (by far the most common) is one tag byte; anything
else is a tag byte, a 32-bit length and an orjson payload. The tag byte is written
last, so a record is either complete or absent, and a zero byte ends the log:
whatever a job managed to record before a timeout or crash is kept.
"""

from __future__ import annotations

import struct

# Bound at import: the writer runs next to untrusted code that may rebind builtins.
from builtins import TypeError, len, memoryview, type  # noqa: A004

import orjson
from orjson import JSONEncodeError, dumps

from ..outcome import C_BAD_RETURN, C_ERROR, C_MEMORY, C_OK

TAG_TRUE, TAG_FALSE, TAG_NONE, TAG_RECORD, TAG_SETUP_ERROR = 1, 2, 3, 4, 5
_LEN = struct.Struct("<I")
_BARE_LETTER = {TAG_TRUE: ord("T"), TAG_FALSE: ord("F"), TAG_NONE: ord("N")}
_R = ord("R")
_JOB_CODES = (C_OK, C_ERROR, C_MEMORY, C_BAD_RETURN)
_SCALARS = (type(None), bool, int, float, str)


def region_size(n_inputs: int, max_value_chars: int) -> int:
    # Worst case per record: JSON may escape one char into 6 bytes; details are <= 300 chars.
    return 65536 + n_inputs * (max_value_chars * 6 + 2048)


def _sanitize(rec):
    code, value, detail = rec
    if type(value) is str:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    detail = detail.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return (code, value, detail)


class Writer:
    """Append-only writer used by the job process."""

    def __init__(self, region):
        self.mm = region
        self.pos = 0
        self.size = len(region)

    def add_bare(self, tag: int) -> None:
        if self.pos < self.size:
            self.mm[self.pos] = tag
            self.pos += 1

    def add(self, obj, tag: int = TAG_RECORD) -> bool:
        try:
            payload = dumps(obj)
        except (TypeError, JSONEncodeError):  # lone surrogates in a str
            payload = dumps(_sanitize(obj))
        start = self.pos + 1 + _LEN.size
        end = start + len(payload)
        if end > self.size:
            return False  # full: the supervisor reports the rest as lost
        self.mm[start:end] = payload
        _LEN.pack_into(self.mm, self.pos + 1, len(payload))
        self.mm[self.pos] = tag  # publish
        self.pos = end
        return True


_NONFINITE = ("nan", "inf", "-inf")


def _valid(rec) -> bool:
    """Whether a record read from the job's log is one the runner could have written.

    The log is written by the job process, which verifier code controls (it can reach the
    runner's writer through frames and gc), so every field is checked here, in a process
    the job cannot touch, before anything is passed on.
    """
    if type(rec) is not list or len(rec) != 3:
        return False
    code, value, detail = rec
    if type(code) is not int or code not in _JOB_CODES or type(detail) is not str:
        return False
    if type(value) in _SCALARS:
        return True
    if type(value) is not dict or len(value) != 1:
        return False
    key, text = next(iter(value.items()))
    if type(text) is not str:
        return False
    if key == "f":
        return text in _NONFINITE
    return key == "i" and text.isascii() and text.lstrip("-").isdigit() and text.count("-") <= 1


def parse(region, n: int, end: int):
    """Read up to n verdicts from region[:end].

    Returns (tags, records, problem, setup_error): tags has one letter per finished
    check -- T/F/N for a bare True/False/None, R for the next entry of records
    ([code, value, detail]); problem says what was wrong with the log, if anything;
    setup_error is the job's report of a confinement step that failed, if any.
    """
    tags = bytearray()
    recs: list = []
    pos = 0
    view = memoryview(region)
    try:
        while len(tags) < n and pos < end:
            tag = region[pos]
            if tag == 0:
                break
            letter = _BARE_LETTER.get(tag)
            if letter is not None:
                tags.append(letter)
                pos += 1
                continue
            if tag not in (TAG_RECORD, TAG_SETUP_ERROR) or pos + 1 + _LEN.size > end:
                return tags, recs, "malformed verdict log", None
            (size,) = _LEN.unpack_from(region, pos + 1)
            start = pos + 1 + _LEN.size
            if start + size > end:
                return tags, recs, "malformed verdict log", None
            try:
                rec = orjson.loads(view[start:start + size])
            except orjson.JSONDecodeError:
                return tags, recs, "malformed verdict record", None
            pos = start + size
            if tag == TAG_SETUP_ERROR and type(rec) is dict:
                return tags, recs, f"sandbox setup failed: {rec.get('setup_error')}", rec
            if not _valid(rec):
                return tags, recs, "malformed verdict record", None
            tags.append(_R)
            recs.append(rec)
    finally:
        view.release()
    return tags, recs, None, None
