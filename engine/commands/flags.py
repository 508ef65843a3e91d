"""Flag values checked while the command line is parsed, before any work starts.

Each function here is an argparse `type=`: it returns the value or raises ArgumentTypeError
with "VALUE: why", and `Parser` prints that as the one line `autoif CMD: --flag VALUE: why`
and exits with EXIT_USAGE. Nothing else of a bad flag (no usage block, no traceback) is printed.
"""
from __future__ import annotations

import argparse
import ipaddress
import math
import re
import socket
import sys
from typing import Any, Callable, NoReturn

from engine.outcome import EXIT_USAGE
from engine.urls import PORT_MAX, url_problem


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `PROG: --flag VALUE: why`, exit EXIT_USAGE.
    Its subparsers are of the same class (argparse makes them with type(parent))."""

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --flag: VALUE: why"; the flag is the subject of the line
        message = re.sub(r"^argument ([^:]+): ", r"\1 ", message)
        self.exit(EXIT_USAGE, f"{self.prog}: {' '.join(message.split())}\n")


def _bad(text: str, why: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{text}: {why}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad(text, "not an integer") from None


def number(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise _bad(text, "not a number") from None
    if not math.isfinite(value):
        raise _bad(text, "not a finite number")
    return value


def at_least(low: int) -> Callable[[str], int]:
    """An integer >= low."""
    def check(text: str) -> int:
        value = _int(text)
        if value < low:
            raise _bad(text, f"must be at least {low}")
        return value
    return check


positive_int = at_least(1)
non_negative_int = at_least(0)


def positive_number(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise _bad(text, "must be more than 0")
    return value


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    value = _int(text)
    if not 1 <= value <= PORT_MAX:
        raise _bad(text, f"not a port (1-{PORT_MAX})")
    return value


def port_or_free(text: str) -> int:
    """A TCP port, or 0: a free one the system picks."""
    value = _int(text)
    if not 0 <= value <= PORT_MAX:
        raise _bad(text, f"not a port (0 for a free one, else 1-{PORT_MAX})")
    return value


def host(text: str) -> str:
    """An IP address, or a name that resolves here (what a server can bind or reach)."""
    name = text.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        raise _bad(repr(text), "empty host")
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    if re.fullmatch(r"[\d.]+", name):       # dotted digits that are no IPv4 address: no DNS lookup
        raise _bad(text, "not an IP address")
    try:
        socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _bad(text, f"does not resolve ({getattr(exc, 'strerror', None) or exc})") from None
    return name


def url(text: str) -> str:
    """An http(s) base URL with a host (and a valid port when it has one); a value may hold
    several, comma-separated, as the repeatable --server flag allows."""
    for part in (p.strip() for p in text.split(",")):
        problem = url_problem(part) if part else None
        if problem:
            raise _bad(text, problem)
    return text


def check_with(parser: argparse.ArgumentParser, dest: str, check: Callable[[str], Any]) -> None:
    """Give the flag stored in `dest` (one added elsewhere, as the config flags are) the `type=`
    check; a flag that is not there is a programming error."""
    for action in parser._actions:
        if action.dest == dest:
            action.type = check
            return
    raise KeyError(f"no flag stores {dest!r}")


def fail(command: str, flag: str, value: Any, why: str) -> int:
    """A flag found bad after parsing (a combination of values): the same one line; EXIT_USAGE."""
    print(f"autoif {command}: {flag} {value}: {why}", file=sys.stderr)
    return EXIT_USAGE
