"""Jobs that crash their process: each is one counted outcome and the next job is correct and prompt."""

import time

import pytest
import pytest_asyncio

from sandbox_pool import DEFAULT_ALLOWED_MODULES, Limits, PoolConfig, SandboxPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

# ctypes/os/sys are not in the default allowlist; hostile cases need them to be expressible at all.
HOSTILE = DEFAULT_ALLOWED_MODULES | {"os", "sys", "ctypes", "signal"}

CRASHES = {
    "segfault": ("import ctypes\ndef evaluate(x):\n    ctypes.string_at(0)\n", "crashed", "killed by SIGSEGV"),
    "abort": ("import os\ndef evaluate(x):\n    os.abort()\n", "crashed", "killed by SIGABRT"),
    "os._exit(3)": ("import os\ndef evaluate(x):\n    os._exit(3)\n", "crashed", "exited with code 3"),
    "os._exit(0)": ("import os\ndef evaluate(x):\n    os._exit(0)\n", "crashed", "exited with code 0"),
    "sys.exit(1)": ("import sys\ndef evaluate(x):\n    sys.exit(1)\n", "error", "SystemExit: 1"),
    "raise SystemExit": ("def evaluate(x):\n    raise SystemExit\n", "error", "SystemExit"),
    "KeyboardInterrupt": ("def evaluate(x):\n    raise KeyboardInterrupt('ctrl-c')\n", "error",
                          "KeyboardInterrupt: ctrl-c"),
    "SIGKILL self": ("import os\ndef evaluate(x):\n    os.kill(os.getpid(), 9)\n", "crashed", "killed by SIGKILL"),
    "SIGSTOP self": ("import os, signal\ndef evaluate(x):\n    os.kill(os.getpid(), signal.SIGSTOP)\n",
                     "timeout", "wall-clock"),
    "kill parent": (
        "import os\n"
        "def evaluate(x):\n"
        "    try:\n"
        "        os.kill(os.getppid(), 9)\n"
        "    except OSError as e:\n"
        "        return 'refused: ' + type(e).__name__\n"
        "    return 'parent signalled'\n",
        "ok", ""),
    "kill everything": (
        "import os\n"
        "def evaluate(x):\n"
        "    for pid in (-1, 1, 0):\n"
        "        try:\n"
        "            os.kill(pid, 9)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 'still here'\n",
        "crashed", "killed by SIGKILL"),
    "bad __bool__/__eq__": (
        "class Liar:\n"
        "    def __bool__(self): raise RuntimeError('x')\n"
        "    def __eq__(self, o): raise RuntimeError('x')\n"
        "    def __repr__(self): raise RuntimeError('x')\n"
        "def evaluate(x):\n    return Liar()\n",
        "bad_return", "Liar"),
    "garbage verdicts": (
        "import gc, mmap, os\n"
        "def evaluate(x):\n"
        "    for o in gc.get_objects():\n"
        "        if type(o) is mmap.mmap:  # the verdict log shared with the supervisor\n"
        "            try:\n"
        "                o[0:64] = b'\\xff' * 64\n"
        "            except (ValueError, TypeError):  # closed or read-only\n"
        "                pass\n"
        "    os._exit(0)\n",
        "crashed", "malformed"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    allowed = HOSTILE | {"gc", "mmap"}
    async with SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=1.0, allowed_modules=allowed))) as p:
        yield p


@pytest.mark.parametrize("name", sorted(CRASHES))
async def test_crash_is_one_counted_outcome(pool, name):
    code, status, detail = CRASHES[name]
    before = pool.stats()
    res = await pool.evaluate(code, ["x"])
    assert res[0].status == status, res
    assert detail in res[0].detail or (status == "ok" and res[0].value.startswith("refused")), res
    after = pool.stats()
    assert after["checks"] - before["checks"] == 1
    assert after[status] - before[status] == 1
    assert after["restarts"] == before["restarts"] == 0  # the worker itself was never lost

    for _ in range(2):  # next jobs, on whichever worker, are right and quick
        t0 = time.perf_counter()
        ok = await pool.evaluate("def evaluate(x):\n    return x.upper()\n", ["ab", "cd"])
        assert [o.value for o in ok] == ["AB", "CD"]
        assert time.perf_counter() - t0 < 0.5


async def test_crash_mid_job_keeps_earlier_verdicts(pool):
    code = "import os\ndef evaluate(x):\n    if x == 3:\n        os._exit(9)\n    return x * 10\n"
    res = await pool.evaluate(code, [1, 2, 3, 4])
    assert [(o.status, o.value) for o in res] == [("ok", 10), ("ok", 20), ("crashed", None), ("crashed", None)]
    assert res[2].detail == "exited with code 9"
