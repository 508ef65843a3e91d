"""Resource limits: wall clock, CPU, memory, processes and output are bounded per job."""

import os
import time

import pytest
import pytest_asyncio

from sandbox_pool import DEFAULT_ALLOWED_MODULES, Limits, PoolConfig, SandboxPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTILE = DEFAULT_ALLOWED_MODULES | {"os", "sys", "time", "signal", "threading", "resource"}
TIMEOUT = 1.0
SLACK = 1.5  # the machine is shared; "prompt" means well before anything else would stop it
ECHO = "def evaluate(x):\n    return x\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    # The per-job CPU budget is tested on its own below; here it is set out of the way so
    # that the wall clock and the rlimits, its backstops, are what these tests meet.
    async with SandboxPool(PoolConfig(workers=2,
                                      limits=Limits(timeout_s=TIMEOUT, memory_mb=256, max_procs=16,
                                                    max_output_bytes=4096, allowed_modules=HOSTILE,
                                                    cpu_base_s=60.0))) as p:
        yield p


async def _run(pool, code, inputs=("x",)):
    t0 = time.perf_counter()
    res = await pool.evaluate(code, list(inputs))
    return res, time.perf_counter() - t0


async def _still_fine(pool):
    res, wall = await _run(pool, ECHO, ["fine"])
    assert res[0].value == "fine" and wall < 1.0


def _sandbox_processes(pool):
    """Host pids of processes (zombies included) owned by this pool's job uids."""
    uids = set(pool.stats()["uids"])
    assert len(uids) == 2 and None not in uids
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = os.stat(f"/proc/{name}")
            except FileNotFoundError:
                continue
            if st.st_uid in uids:
                found.append(int(name))
    return found


HANGS = {
    "busy loop": "def evaluate(x):\n    while True:\n        pass\n",
    "ignores signals": (
        "import signal\n"
        "def evaluate(x):\n"
        "    for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "        signal.signal(s, signal.SIG_IGN)\n"
        "    signal.alarm(0)\n"
        "    while True:\n"
        "        pass\n"
    ),
    "threads": (
        "import threading\n"
        "def spin():\n"
        "    while True:\n"
        "        pass\n"
        "def evaluate(x):\n"
        "    ts = [threading.Thread(target=spin, daemon=True) for _ in range(4)]\n"
        "    for t in ts:\n"
        "        t.start()\n"
        "    for t in ts:\n"
        "        t.join()\n"
    ),
    "deep recursion": (
        "import sys\n"
        "sys.setrecursionlimit(10**9)\n"
        "def f(n):\n"
        "    s = 0\n"
        "    for i in range(50):\n"
        "        s += i\n"
        "    return f(n + 1) + s\n"
        "def evaluate(x):\n"
        "    return f(0)\n"
    ),
    "sleep": "import time\ndef evaluate(x):\n    time.sleep(3600)\n",
}


@pytest.mark.parametrize("name", sorted(HANGS))
async def test_hangs_end_as_timeout_promptly(pool, name):
    res, wall = await _run(pool, HANGS[name], ["a", "b"])
    assert [o.status for o in res] == ["timeout", "timeout"], res
    assert "wall-clock" in res[0].detail
    assert TIMEOUT * 0.9 <= wall < TIMEOUT + SLACK
    assert TIMEOUT * 0.9 <= res.elapsed_s < TIMEOUT + 0.5
    await _still_fine(pool)


async def test_rlimits_are_set_inside_the_job(pool):
    code = (
        "import resource\n"
        "def evaluate(name):\n"
        "    return str(resource.getrlimit(getattr(resource, name)))\n"
    )
    names = ["RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_NOFILE"]
    res = await pool.evaluate(code, names)
    limits = dict(zip(names, (eval(o.value) for o in res)))
    assert limits["RLIMIT_CPU"] == (2, 3)  # ceil(timeout_s) + 1, hard limit one second later
    soft_as = limits["RLIMIT_AS"][0]
    assert 256 << 20 < soft_as < (256 << 20) + (1 << 30)  # baseline + memory_mb, not unlimited
    assert limits["RLIMIT_NPROC"] == (16, 16)
    assert limits["RLIMIT_FSIZE"][0] == 16 << 20
    assert limits["RLIMIT_CORE"] == (0, 0)
    assert limits["RLIMIT_NOFILE"] == (64, 64)


async def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=20.0, cpu_s=1))) as p:
        t0 = time.perf_counter()
        res = await p.evaluate("def evaluate(x):\n    while True:\n        pass\n", [0])
        wall = time.perf_counter() - t0
        assert res[0].status == "timeout" and "CPU" in res[0].detail, res
        assert wall < 8.0  # 1 s of CPU (2 s hard) on a shared machine, far below the 20 s wall clock
        # Sleeping uses no CPU: that one is for the wall clock, which is generous here.
        res = await p.evaluate("def evaluate(x):\n    return x * 3\n", [3])
        assert res[0].value == 9


async def test_memory_bomb_is_a_memory_outcome(pool):
    code = (
        "def evaluate(x):\n"
        "    if x == 'list':\n"
        "        hog = []\n"
        "        while True:\n"
        "            hog.append(bytearray(1 << 20))\n"
        "    if x == 'one':\n"
        "        return len('a' * (1 << 32))\n"
        "    return 'survived'\n"
    )
    res, wall = await _run(pool, code, ["list", "one", "after"])
    assert [o.status for o in res] == ["memory", "memory", "ok"], res
    assert res[2].value == "survived"  # the job itself recovered and went on
    assert wall < TIMEOUT + SLACK
    await _still_fine(pool)


async def test_process_count_is_bounded(pool):
    # Children only sleep, so without RLIMIT_NPROC this would fork hundreds until the deadline.
    code = (
        "import os, time\n"
        "def evaluate(x):\n"
        "    n = 0\n"
        "    try:\n"
        "        while True:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(30)\n"
        "                os._exit(0)\n"
        "            n += 1\n"
        "    except OSError:\n"
        "        return n\n"
    )
    res, wall = await _run(pool, code)
    assert res[0].status == "ok" and res[0].value < 16, res
    assert wall < TIMEOUT
    assert _sandbox_processes(pool) == []  # the sleeping children were killed with the job


async def test_fork_bomb_ends_quickly_and_pool_survives(pool):
    code = "import os\ndef evaluate(x):\n    while True:\n        os.fork()\n"
    before = pool.stats()
    res, wall = await _run(pool, code, ["a", "b"])
    assert all(o.status in ("error", "crashed", "timeout") for o in res), res
    assert res[0].status != "timeout" and wall < TIMEOUT  # stopped by the process limit, not the clock
    after = pool.stats()
    assert after["checks"] - before["checks"] == 2
    assert _sandbox_processes(pool) == []
    await _still_fine(pool)


async def test_output_flood_is_truncated(pool):
    code = (
        "import sys\n"
        "def evaluate(x):\n"
        "    chunk = 'y' * (1 << 20)\n"
        "    for _ in range(50):\n"
        "        sys.stdout.write(chunk)\n"
        "        sys.stderr.write(chunk)\n"
        "    print('the end')\n"
        "    return True\n"
    )
    res, wall = await _run(pool, code)
    assert res[0].status == "ok" and res[0].value is True
    head, _, note = res.output.partition("\n[output truncated")
    assert head == "y" * 4096
    assert "104857608 bytes written" in note  # all of it was read (and dropped), none of it kept
    assert len(res.output) < 4096 + 200
    assert wall < TIMEOUT + SLACK


# ---- the per-job CPU-time budget ---------------------------------------------------------------

LOOPS_ON = (
    "def evaluate(x):\n"
    "    while x == 'loop':\n"
    "        pass\n"
    "    return x.upper()\n"
)


async def test_cpu_budget_cuts_a_looping_verifier_long_before_the_wall_clock():
    async with SandboxPool(PoolConfig(workers=1,
                                      limits=Limits(timeout_s=20.0, cpu_base_s=0.05, cpu_per_input_s=0.01))) as p:
        t0 = time.perf_counter()
        res = await p.evaluate(LOOPS_ON, ["a", "b", "loop", "c"])
        wall = time.perf_counter() - t0
        assert [o.status for o in res] == ["ok", "ok", "timeout", "timeout"], res
        assert [o.value for o in res[:2]] == ["A", "B"]  # checks done before the cut keep verdicts
        assert "CPU-time budget of 0.09 s" in res[2].detail
        assert wall < 5.0  # 0.09 s of CPU; the shared machine may stretch it, never to 20 s
        # The budget scales with the inputs: an honest job of 500 string checks is never cut.
        texts = [f"response number {i} " * 50 for i in range(500)]
        code = "def evaluate(r):\n    return len(re.findall(r'\\w+', r)) > 10 and r.lower() != r\n"
        res = await p.evaluate(code, texts)
        assert all(o.ok for o in res), {o.detail for o in res if not o.ok}


async def test_cpu_budget_ignored_by_the_verifier_still_meets_the_wall_clock():
    code = (
        "import signal\n"
        "signal.signal(signal.SIGPROF, signal.SIG_IGN)\n"
        "def evaluate(x):\n"
        "    while True:\n"
        "        pass\n"
    )
    async with SandboxPool(PoolConfig(workers=1,
                                      limits=Limits(timeout_s=TIMEOUT, cpu_base_s=0.05,
                                                    allowed_modules=HOSTILE))) as p:
        res, wall = await _run(p, code, ["a"])
        assert res[0].status == "timeout" and "wall-clock" in res[0].detail, res
        assert wall < TIMEOUT + SLACK
