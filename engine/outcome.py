"""How a run ended: its exit status and the closing lines that say so.

A run tells the truth: an item dropped because something failed (an LLM request that ran
out of retries, a server that went away, a bug) is not a verdict on the data, so the run
does not end in success. Deliberate drops (a verifier that does not parse, a response that
fails its checks) are the pipeline working and leave the exit status at 0.

Exit codes of `autoif run` (also in `autoif run --help`):
  0    completed; every item reached a verdict
  1    the job failed while running (no server answers, disk full, a shard lost for good);
       one line says why, and what was stored before is kept
  2    refused before any work: bad flags or config, missing or unreadable input files, too
       many bad input lines, an output directory that cannot be written
  3    completed, but items were lost to errors; the last lines say how many and in which
       stage, and running the same command again retries exactly those
  130  interrupted (Ctrl-C, SIGTERM): what finished is stored; the same command resumes
"""
from __future__ import annotations

import errno
import sqlite3
import sys
from typing import Mapping

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOST = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = ("exit status: 0 completed; 1 failed while running (one line says why); "
                   "2 refused before any work (flags, config, inputs, output directory); "
                   "3 items lost to errors (rerun the same command to retry exactly those); "
                   "130 interrupted (rerun to resume)")

ERROR_PREFIX = "error:"   # funnel drop reasons of items lost to a failure, not dropped on merit


def error_reason(exc: BaseException) -> str:
    """The funnel drop reason of an item whose stage raised: `error:<kind>`, a small set of
    values (a client failure's kind such as http_5xx or connect, else the exception type)."""
    kind = getattr(exc, "kind", None)
    return ERROR_PREFIX + (kind if isinstance(kind, str) and kind else type(exc).__name__)


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def is_storage_failure(exc: BaseException) -> bool:
    """The disk cannot take more (full, over quota, read-only, file too large): no later item
    can be stored either, so the run stops instead of counting each one as lost."""
    if isinstance(exc, OSError):
        return exc.errno in _STORAGE_ERRNOS
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        return any(s in text for s in ("disk is full", "disk i/o error", "readonly database"))
    return False


_BIND_ERRNOS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def is_bind_failure(exc: BaseException) -> bool:
    """A listening socket cannot have its address: in use, not this machine's, or privileged.
    The flags that name it are at fault, so the command is refused (EXIT_USAGE)."""
    return isinstance(exc, OSError) and exc.errno in _BIND_ERRNOS


def lost_items(funnel: Mapping[str, Mapping]) -> dict[str, dict[str, int]]:
    """{stage: {reason: n}} of items lost to errors (main stages; sub-item rows excluded)."""
    out: dict[str, dict[str, int]] = {}
    for stage, row in funnel.items():
        if "." in stage:
            continue
        errors = {r: n for r, n in row.get("dropped", {}).items() if r.startswith(ERROR_PREFIX) and n}
        if errors:
            out[stage] = errors
    return out


def exit_code(summary: Mapping) -> int:
    if summary.get("stopped") in ("drained", "aborted"):
        return EXIT_INTERRUPTED
    return EXIT_LOST if lost_items(summary.get("funnel", {})) else EXIT_OK


def closing_lines(summary: Mapping, command: str = "autoif run") -> list[str]:
    """The last lines of a run: what was lost or left, and what to do about it."""
    lost = lost_items(summary.get("funnel", {}))
    lines = []
    if lost:
        total = sum(sum(r.values()) for r in lost.values())
        where = "; ".join(f"{stage}: " + ", ".join(f"{n} {reason[len(ERROR_PREFIX):]}"
                                                    for reason, n in reasons.items())
                          for stage, reasons in lost.items())
        lines.append(f"{command}: {total} item(s) lost to errors ({where}); "
                     "the exports hold only what was finished")
        lines.append(f"{command}: run the same command again to retry exactly those "
                     "(answers already received are reused, nothing is duplicated)")
    if summary.get("stopped") in ("drained", "aborted"):
        lines.append(f"{command}: interrupted ({summary['stopped']}); what finished is stored, "
                     "run the same command again to resume")
    return lines


def finish(summary: Mapping, command: str = "autoif run") -> int:
    """Print the closing lines and return the exit status. Called once the job has closed its
    server client, pool and servers, so no late log line (a health probe) lands after them."""
    for line in closing_lines(summary, command):
        print(line, file=sys.stderr)
    return exit_code(summary)
