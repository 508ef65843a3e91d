"""Static precheck: bad code is rejected with a reason and never reaches a worker."""

import pytest
import pytest_asyncio

from sandbox_pool import DEFAULT_ALLOWED_MODULES, Limits, PoolConfig, SandboxPool, precheck
from sandbox_pool.host.precheck import _precheck_cached

GOOD = "import re\nfrom collections import Counter\ndef evaluate(response):\n    return bool(re.search('a', response))\n"

REJECTED = {
    "no evaluate": ("def check(response):\n    return True\n", "evaluate"),
    "evaluate only nested": ("def outer():\n    def evaluate(r):\n        return True\n", "evaluate"),
    "syntax error": ("def evaluate(response)\n    return True\n", "SyntaxError"),
    "import os": ("import os\ndef evaluate(r):\n    return True\n", "'os'"),
    "import subprocess": ("import subprocess\ndef evaluate(r):\n    return True\n", "'subprocess'"),
    "import socket in function": ("def evaluate(r):\n    import socket\n    return True\n", "'socket'"),
    "from os import path": ("from os import path\ndef evaluate(r):\n    return True\n", "'os'"),
    "import os.path": ("import os.path\ndef evaluate(r):\n    return True\n", "'os.path'"),
    "dunder import": ("def evaluate(r):\n    return __import__('os').getcwd()\n", "__import__"),
    "importlib name": ("def evaluate(r):\n    return importlib\n", "importlib"),
    "builtins attr import": ("def evaluate(r):\n    return (lambda b: b.__import__)(0)\n", "__import__"),
    "relative import": ("from . import x\ndef evaluate(r):\n    return True\n", "relative"),
    "nul byte": ("def evaluate(r):\n    return '\x00'\n\x00", ""),
}


def test_accepts_ordinary_verifier():
    assert precheck(GOOD) is None
    assert precheck(GOOD, DEFAULT_ALLOWED_MODULES) is None


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejects_with_one_line_reason(name):
    code, needle = REJECTED[name]
    reason = precheck(code)
    assert reason is not None, name
    assert "\n" not in reason
    assert needle in reason


def test_custom_allowlist_widens_and_narrows():
    code = "import os\ndef evaluate(r):\n    return True\n"
    assert precheck(code, {"os"}) is None
    assert precheck(GOOD, {"collections"}) is not None  # 're' no longer allowed


def test_results_are_cached_by_code():
    code = GOOD + "# cache probe\n"
    before = _precheck_cached.cache_info()
    precheck(code)
    precheck(code)
    after = _precheck_cached.cache_info()
    assert after.hits - before.hits >= 1
    assert after.misses - before.misses == 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=1.0))) as p:
        yield p


@pytest.mark.asyncio(loop_scope="module")
async def test_rejected_jobs_never_reach_a_worker(pool):
    before = pool.stats()
    bad = [REJECTED[k][0] for k in ("import os", "dunder import", "syntax error", "no evaluate")]
    results = await pool.evaluate_many([(code, ["x", "y"]) for code in bad])
    for res in results:
        assert [o.status for o in res] == ["rejected", "rejected"]
        assert res[0].detail and not res[0].ok
    after = pool.stats()
    assert after["dispatched"] == before["dispatched"]  # nothing was sent to a worker
    assert after["rejected"] - before["rejected"] == 8
    assert after["busy_s"] == before["busy_s"]
    # A good job on the same pool is dispatched and runs.
    ok = await pool.evaluate(GOOD, ["abc", "xyz"])
    assert [o.value for o in ok] == [True, False]
    assert pool.stats()["dispatched"] == before["dispatched"] + 1
