"""Runs verifier code inside the confined job process and records verdicts.

Verdicts go to a shared-memory log (see verdicts.py) as each check finishes, so
every finished check survives a timeout or crash -- even when the verifier hangs
inside C code (a catastrophic regex) where no timer-driven flush could run.
Everything returned by the verifier is inspected with type() only: calling its
__bool__/__eq__/__str__ would run more untrusted code outside the per-check guard.
"""

from __future__ import annotations

import builtins
import sys

# Bound here, not looked up at call time: verifier code may rebind builtins.len, math.isfinite,
# orjson.dumps... in its own process, and that must not break the reporting of its verdicts.
from builtins import (BaseException, MemoryError, NameError, ValueError, callable,  # noqa: A004
                      compile, enumerate, exec, isinstance, len, list, repr, str, type)
from math import isfinite
from os import _exit, getpid
from signal import ITIMER_PROF, setitimer

from ..outcome import C_BAD_RETURN, C_ERROR, C_MEMORY, C_OK
from .verdicts import TAG_FALSE, TAG_NONE, TAG_TRUE, Writer

_I64_MIN, _U64_MAX = -(2 ** 63), 2 ** 64 - 1


# outcome.one_line, with this module's bound builtins (see above).
def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_exception(exc: BaseException) -> tuple[int, None, str]:
    try:
        name = type(exc).__name__
        if not isinstance(name, str):
            name = "Exception"
    except BaseException:
        name = "Exception"
    try:
        msg = str(exc)
        if type(msg) is not str:
            msg = "<unprintable message>"
    except BaseException:  # a hostile __str__ must not take the runner down
        msg = "<unprintable message>"
    detail = one_line(f"{name}: {msg}" if msg else name)
    return (C_MEMORY if isinstance(exc, MemoryError) else C_ERROR, None, detail)


def encode_value(v, max_chars: int):
    t = type(v)
    if v is None or t is bool:
        return (C_OK, v, "")
    if t is str:
        return (C_OK, v if len(v) <= max_chars else v[:max_chars], "")
    if t is float:
        return (C_OK, v if isfinite(v) else {"f": repr(v)}, "")
    if t is int:
        if _I64_MIN <= v <= _U64_MAX:
            return (C_OK, v, "")
        try:
            return (C_OK, {"i": str(v)}, "")
        except ValueError:  # beyond the int->str digit limit
            return (C_BAD_RETURN, None, "evaluate returned an int too large to transport")
    try:
        name = t.__name__
        if type(name) is not str:
            name = "object"
    except BaseException:
        name = "object"
    return (C_BAD_RETURN, None, one_line(f"evaluate returned {name}; expected bool, int, float, str or None"))


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass


def _describe_safely(exc: BaseException):
    # The traceback pins the failing frames' locals (e.g. the list that exhausted memory).
    try:
        exc.__traceback__ = None
    except BaseException:
        pass
    try:
        return describe_exception(exc)
    except BaseException:
        return _UNREPORTABLE


_UNREPORTABLE = (C_ERROR, None, "exception could not be described")


def run(code, inputs: list, out: Writer, max_value_chars: int, prebound: dict,
        rearm: list[tuple[int, float]] = ()) -> None:
    """Execute `code` (source or code object), call its evaluate() on each input, record verdicts.

    `prebound` (allowed modules already imported) seeds the verifier's globals, so code that
    uses `re` without `import re` still works. `rearm`: (input index, CPU seconds) at which the
    job's CPU timer starts afresh (the next caller's part of a merged job).
    """
    me = getpid()
    namespace = {**prebound, "__name__": "__verifier__", "__builtins__": builtins}
    try:
        if type(code) is str:
            code = compile(code, "<verifier>", "exec")
        exec(code, namespace)
        fn = namespace.get("evaluate")
        if not callable(fn):
            raise NameError("evaluate is not defined as a function")
    except BaseException as e:
        if getpid() != me:  # a fork made by the module body must not report
            _exit(0)
        code_, _, detail = _describe_safely(e)
        del e
        rec = (code_, None, one_line("while loading the code: " + detail))
        for _ in inputs:
            out.add(rec)
        _flush_std()
        return

    rearm = list(rearm)
    next_at = rearm[0][0] if rearm else -1
    for i, item in enumerate(inputs):
        if i == next_at:
            setitimer(ITIMER_PROF, rearm.pop(0)[1])
            next_at = rearm[0][0] if rearm else -1
        try:
            v = fn(item)
        except BaseException as e:
            rec = _describe_safely(e)
            del e
        else:
            if v is True:
                rec = TAG_TRUE
            elif v is False:
                rec = TAG_FALSE
            elif v is None:
                rec = TAG_NONE
            else:
                rec = encode_value(v, max_value_chars)
        if getpid() != me:  # the verifier forked and this is the child returning
            _exit(0)
        if type(rec) is int:
            out.add_bare(rec)
        else:
            out.add(rec)
    _flush_std()
