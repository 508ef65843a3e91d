"""Helpers several test files share: processes that must be gone, free ports, JSONL files.

Import them (`from tests.conftest import alive`); the test doubles of peers live in tests/doubles.py.
It also tells pytest-xdist (`make test` runs `-n 2 --dist loadscope`) which tests share a worker.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import orjson
import pytest


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


@pytest.fixture(scope="session")
def embedded_llama(tmp_path_factory):
    """One embedded llama-server (the default model, 8 slots) for every test that only talks to
    it: a start costs seconds of both cores, and those tests run on one worker (below)."""
    from engine.servers import default_embedded_server
    srv = default_embedded_server(tmp_path_factory.mktemp("embedded-llama"), parallel=8).start_sync()
    yield srv
    srv.stop_sync()


# The modules that use the embedded llama-server: one work unit, so two such servers never
# share the 2 cores, and the session's shared server starts once. Every other module is its own unit, so its module-scoped fixtures (pools,
# servers, a Ray cluster, a reference run) start on one worker only.
EMBEDDED_MODEL_MODULES = ("tests/bench/test_quality.py", "tests/engine/servers/test_llamacpp.py",
                          "tests/engine/test_evaluation.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "embedded-model" if module in EMBEDDED_MODEL_MODULES else module

    return ModuleScheduling(config, log)
