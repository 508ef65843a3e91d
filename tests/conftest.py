"""Helpers several test files share: processes that must be gone, free ports, JSONL files.

Import them (`from tests.conftest import alive`); the test doubles of peers live in tests/doubles.py.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import orjson


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pids, timeout: float = 5.0) -> list[int]:
    """Wait until none of pids is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path: Path) -> list[dict]:
    """The JSON value of each non-blank line."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
