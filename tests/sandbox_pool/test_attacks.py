"""The red-team's breaks, one test per attack class, each against the real pool.

Verifier code is hostile: these verifiers get past the import filter (it allows them os,
sys, ctypes here) and attack the isolation layers themselves. Where a protection can be
switched off, a control run without it shows the attack really does what the test guards
against, so each test fails when its protection is removed.
"""

import asyncio
import ctypes
import json
import logging
import os
import signal
import time

import pytest

from sandbox_pool import DEFAULT_ALLOWED_MODULES, Limits, PoolConfig, SandboxPool
from sandbox_pool.channel import header

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTILE = DEFAULT_ALLOWED_MODULES | {"os", "sys", "time", "ctypes", "gc"}
ECHO = "def evaluate(x):\n    return x\n"
GRACE = 2.0


def _pool(*disabled, workers=1, timeout_s=2.0, scratch_root=None, **limits):
    # Some attacks here take a lot of CPU on purpose (1,100 mkdirs, 240 MB of writes): the
    # per-job CPU budget, tested in test_limits.py, is set out of their way.
    return SandboxPool(PoolConfig(
        workers=workers, grace_s=GRACE, scratch_root=scratch_root,
        limits=Limits(timeout_s=timeout_s, allowed_modules=HOSTILE, disable_layers=disabled,
                      cpu_base_s=60.0, **limits)))


async def _bounded(coro, timeout_s):
    """The call must come back: a hang is a failure, not a stuck test run."""
    return await asyncio.wait_for(coro, timeout_s)


async def _answers_honestly(pool):
    res = await _bounded(pool.evaluate(ECHO, ["fine", 3]), 10)
    assert [o.value for o in res] == ["fine", 3], res


# ---- attack class: forging the result channel ---------------------------------------------------

# The verifier reaches the runner's verdict writer through its caller's frame and writes records
# the runner itself never would. The red-team's {'f': 'pwned'} made the pool raise inside its
# event-loop callback and never resolve the job.
FORGE = (
    "import sys\n"
    "def evaluate(x):\n"
    "    out = sys._getframe(1).f_locals['out']\n"
    "    if x == 'raw':\n"
    "        out.mm[out.pos:out.pos + 6] = b'\\x04\\xff\\xff\\xff\\x7f{'\n"
    "        out.pos += 6\n"
    "    else:\n"
    "        out.add(x)\n"
    "    return True\n"
)
FORGED = {"nonfinite": [0, {"f": "pwned"}, ""], "bigint": [0, {"i": "12x"}, ""],
          "status": [9, None, "made up"], "shape": {"a": 1}, "raw": "raw"}


@pytest.mark.parametrize("kind", sorted(FORGED))
async def test_forged_verdict_record_attack_becomes_a_crashed_outcome(kind):
    async with _pool("job_cgroup") as p:
        loop_errors = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        res = await _bounded(p.evaluate(FORGE, [FORGED[kind], "next"]), 2.0 + GRACE + 3)
        assert [o.status for o in res] == ["crashed", "crashed"], res
        assert "malformed verdict" in res[0].detail and "\n" not in res[0].detail
        await _answers_honestly(p)
        assert p.stats()["restarts"] == 0  # refused by the supervisor, not by losing the worker
        assert not loop_errors


def _grab_supervisor_socket(pid: int) -> int:
    """A duplicate of the supervisor's end of its pool connection (pidfd_getfd, as root)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        fd = json.loads(f.read().split(b"\0")[4])["fd"]  # python -I -c BOOT ARGS
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd
        if got < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return got
    finally:
        os.close(pidfd)


def _frame(body: bytes) -> bytes:
    return header(len(body)) + body


FRAMES = {
    "not json": _frame(b"{{{{{"),
    "wrong shape": _frame(b'{"x": 1}'),
    "forged value": None,  # filled in with the running job's id
    "wrong job": _frame(b'[999999,"T",[],"",0,0]'),
    "oversized": header(1 << 30),
    "negative size": b"\xff\xff\xff\xf0",
}


@pytest.mark.skipif(os.geteuid() != 0, reason="impersonating a supervisor needs pidfd_getfd as root")
async def test_malformed_frames_from_a_worker_attack_fail_only_that_job():
    # Stands in for a compromised supervisor: the test stops it and writes to the pool itself.
    async with _pool("job_cgroup") as p:
        loop_errors = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        for name, frame in FRAMES.items():
            pid = p.stats()["pids"][0]
            sock = _grab_supervisor_socket(pid)
            os.kill(pid, signal.SIGSTOP)
            try:
                job = asyncio.ensure_future(p.evaluate(ECHO, ["x"]))
                await asyncio.sleep(0.05)
                if frame is None:
                    job_id = p._next_id
                    body = b'[%d,"R",[[0,{"f":"pwned"},""]],"",0,0]' % job_id
                    frame = _frame(body)
                os.write(sock, frame)
                res = await _bounded(job, 2.0 + GRACE + 3)
            finally:
                os.close(sock)
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:  # already replaced and reaped
                    pass
            assert [o.status for o in res] == ["crashed"], (name, res)
            assert "malformed answer" in res[0].detail and "\n" not in res[0].detail, (name, res)
            await _answers_honestly(p)
        assert p.stats()["restarts"] == len(FRAMES)
        assert not loop_errors


# ---- every job resolves ---------------------------------------------------------------------------

async def test_wedged_worker_job_still_resolves_within_timeout_plus_grace():
    async with _pool("job_cgroup", timeout_s=1.0) as p:
        pid = p.stats()["pids"][0]
        os.kill(pid, signal.SIGSTOP)  # a supervisor that never answers (stopped, deadlocked...)
        t0 = time.monotonic()
        res = await _bounded(p.evaluate(ECHO, ["x"]), 30)
        waited = time.monotonic() - t0
        assert [o.status for o in res] == ["crashed"] and "no answer" in res[0].detail, res
        assert 1.0 + GRACE <= waited < 1.0 + GRACE + 1.5, waited
        await _answers_honestly(p)


# ---- attack class: memory outside one process' address space ------------------------------------

CHILDREN = (
    "import os, time\n"
    "def evaluate(n):\n"
    "    r, w = os.pipe()\n"
    "    kids = []\n"
    "    for _ in range(n):\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            hog = b'x' * (90 << 20)  # touched, not lazily zero-mapped\n"
    "            time.sleep(1.5)  # all of them hold their memory at once\n"
    "            os.write(w, b'1')  # only a child that held it to the end counts\n"
    "            os._exit(0)\n"
    "        kids.append(pid)\n"
    "    os.close(w)\n"
    "    for pid in kids:\n"
    "        os.waitpid(pid, 0)\n"
    "    return len(os.read(r, 64))\n"
)

MEMFDS = (
    "import os\n"
    "def evaluate(n):\n"
    "    fds, mb = [], 0\n"
    "    chunk = b'y' * (1 << 20)\n"
    "    try:\n"
    "        for i in range(n):\n"
    "            fd = os.memfd_create(f'm{i}')\n"
    "            fds.append(fd)\n"
    "            for _ in range(12):\n"
    "                os.write(fd, chunk)\n"
    "                mb += 1\n"
    "    except OSError:\n"
    "        pass\n"
    "    return mb\n"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="job cgroups need root")
async def test_memory_of_forked_children_and_memfds_attack_is_bounded_per_job(caplog):
    async with _pool(timeout_s=5.0, memory_mb=128) as p:
        assert p.stats()["isolation"]["job_cgroup"], p.stats()
        kids = await p.evaluate(CHILDREN, [3])
        # 3 x 90 MB against 128 MB: the cgroup's OOM killer stops all but one child (or the job).
        # A child reports after its hold, so one killed after allocating is not counted.
        assert kids[0].status == "memory" or (kids[0].ok and kids[0].value <= 1), kids
        memfd = await p.evaluate(MEMFDS, [20])  # 240 MB of shared memory, no mapping at all
        assert memfd[0].status == "memory" or (memfd[0].ok and memfd[0].value <= 144), memfd
        assert "memory limit" in (kids[0].detail + memfd[0].detail) or memfd[0].ok
        await _answers_honestly(p)
    caplog.set_level(logging.WARNING, logger="sandbox_pool")
    async with _pool("job_cgroup", timeout_s=5.0, memory_mb=128) as p:  # control: rlimits alone
        assert "job_cgroup" in p.stats()["degraded"]
        warned = [r.getMessage() for r in caplog.records if "job_cgroup" in r.getMessage()]
        assert len(warned) == 1 and "not per job" in warned[0]  # one clear warning
        assert (await p.evaluate(CHILDREN, [3]))[0].value == 3
        assert (await p.evaluate(MEMFDS, [20]))[0].value == 240


# ---- attack class: SysV IPC shared between jobs and with the host --------------------------------

IPC_KEY_SHM, IPC_KEY_MSG = 0x5A17_0001, 0x5A17_0002
IPC_CREATE = (
    "import ctypes\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def evaluate(keys):\n"
    "    shm = libc.shmget(keys[0], 64 << 20, 0o1600)  # IPC_CREAT | 0600\n"
    "    msq = libc.msgget(keys[1], 0o1600)\n"
    "    buf = ctypes.create_string_buffer(b'\\x01\\0\\0\\0\\0\\0\\0\\0secret', 14)\n"
    "    sent = libc.msgsnd(msq, buf, 6, 0)\n"
    "    return json.dumps([shm, msq, sent])\n"
)
IPC_FIND = (  # a different verifier, in a later job on the same worker
    "import ctypes\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def evaluate(keys):\n"
    "    shm = libc.shmget(keys[0], 0, 0)\n"
    "    msq = libc.msgget(keys[1], 0)\n"
    "    got = b''\n"
    "    if msq >= 0:\n"
    "        buf = ctypes.create_string_buffer(64)\n"
    "        n = libc.msgrcv(msq, buf, 56, 0, 0o4000)  # IPC_NOWAIT\n"
    "        got = buf.raw[8:8 + max(n, 0)]\n"
    "    return json.dumps([shm >= 0, msq >= 0, got.decode()])\n"
)


def _host_ipc_keys() -> set[int]:
    keys = set()
    for kind in ("shm", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            next(f)
            keys.update(int(line.split()[0]) for line in f)
    return keys


def _remove_host_ipc(keys) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    shm, msq = libc.shmget(keys[0], 0, 0), libc.msgget(keys[1], 0)
    if shm >= 0:
        libc.shmctl(shm, 0, None)
    if msq >= 0:
        libc.msgctl(msq, 0, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="IPC namespaces need root")
async def test_sysv_ipc_attack_objects_die_with_their_job():
    keys = [IPC_KEY_SHM + os.getpid(), IPC_KEY_MSG + os.getpid()]
    async with _pool("job_cgroup") as p:
        made = json.loads((await p.evaluate(IPC_CREATE, [keys]))[0].value)
        assert made[0] >= 0 and made[1] >= 0 and made[2] == 0, made  # the attack itself works
        assert not set(keys) & _host_ipc_keys()  # never in the host's namespace
        assert json.loads((await p.evaluate(IPC_FIND, [keys]))[0].value) == [False, False, ""]
    try:
        async with _pool("job_cgroup", "ipc_namespace") as p:  # control: objects outlive the job
            await p.evaluate(IPC_CREATE, [keys])
            assert set(keys) <= _host_ipc_keys()
            assert json.loads((await p.evaluate(IPC_FIND, [keys]))[0].value) == [True, True, "secret"]
    finally:
        _remove_host_ipc(keys)


@pytest.mark.skipif(os.geteuid() != 0, reason="IPC namespaces need root")
async def test_sysv_ipc_attack_finds_no_namespace_shared_with_another_job():
    # Not only swept after each job: each job has an IPC namespace of its own, so its objects
    # die with its last process and no two jobs (nor the worker) ever share one.
    code = "import os\ndef evaluate(x):\n    return os.readlink('/proc/self/ns/ipc')\n"
    async with _pool() as p:
        worker = os.readlink(f"/proc/{p.stats()['pids'][0]}/ns/ipc")
        seen = [(await p.evaluate(code + f"# job {i}\n", [0]))[0].value for i in range(2)]
    assert all(ns.startswith("ipc:[") for ns in seen), seen
    assert worker not in seen and os.readlink("/proc/self/ns/ipc") not in seen, (worker, seen)


# ---- attack class: scratch content that breaks its cleanup ---------------------------------------

DEEP = (
    "import os\n"
    "def evaluate(depth):\n"
    "    if depth == 0:\n"
    "        return len(os.listdir('.'))\n"
    "    for _ in range(depth):\n"
    "        os.mkdir('d')\n"
    "        os.chdir('d')\n"
    "        open('f', 'w').close()\n"
    "    os.chmod('.', 0o500)\n"
    "    return depth\n"
)


@pytest.mark.parametrize("disabled", [(), ("scratch_quota",)], ids=["own-tmpfs", "plain-dir"])
async def test_deep_scratch_tree_attack_does_not_kill_the_zygote(disabled):
    # 1,100 levels made shutil.rmtree raise RecursionError in the zygote: the worker restarted.
    # Scratch on a RAM-backed dir: a disk here takes seconds for 1,100 mkdirs, the cleanup not.
    ram = "/dev/shm" if os.path.isdir("/dev/shm") else None
    # 2,500 inodes: a second tree fits only if the first one was really removed.
    async with _pool("job_cgroup", *disabled, timeout_s=5.0, max_scratch_files=2500, scratch_root=ram) as p:
        before = p.stats()["pids"]
        for _ in range(2):
            assert (await p.evaluate(DEEP, [1100]))[0].value == 1100
            assert (await p.evaluate(DEEP, [0]))[0].value == 0  # the next job starts clean
            if disabled:  # without the worker's own tmpfs the job dirs are visible here
                assert os.listdir(os.path.join(p._scratch_root, "w0")) == []
        assert p.stats()["restarts"] == 0 and p.stats()["pids"] == before


# ---- attack class: getting past the import filter ------------------------------------------------

# The import filter is a filter for honest mistakes; none of these are stopped by it. What
# stops them is the layers below: here the job, holding `os`, tries to read a root-only file
# outside its allowed paths and to write next to it.
GET_OS = {
    "exec of a string": "exec('import o' + 's as m', g := {}); m = g['m']",
    "builtins getattr": "m = getattr(__builtins__, '__im' + 'port__')('o' + 's')",
    "builtins dict": "m = __builtins__.__dict__['__im' + 'port__']('os')",
    "subclasses gadget": ("m = [c for c in ().__class__.__base__.__subclasses__() "
                          "if c.__name__ == '_wrap_close'][0].__init__.__globals__['sys'].modules['os']"),
    "random._os": "m = random._os",
    "collections._sys": "m = collections._sys.modules['os']",
    "eval of compile": "m = eval(compile('__imp' + 'ort__(\"os\")', 's', 'eval'))",
}
BYPASS = (
    "import random, collections\n"
    "def evaluate(path):\n"
    "    {get}\n"
    "    found = []\n"
    "    try:\n"
    "        found.append(m.read(m.open(path, m.O_RDONLY), 64).decode())\n"
    "    except OSError as e:\n"
    "        found.append('read blocked')\n"
    "    try:\n"
    "        m.close(m.open(path + '.planted', m.O_WRONLY | m.O_CREAT, 0o600))\n"
    "        found.append('wrote')\n"
    "    except OSError:\n"
    "        found.append('write blocked')\n"
    "    return ' / '.join(found)\n"
)


async def test_import_filter_bypass_attack_is_held_by_the_isolation_layers(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o600)
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=2.0))) as p:  # the default allowlist: no os
        for trick, get in GET_OS.items():
            code = BYPASS.replace("{get}", get)
            res = await p.evaluate(code, [str(secret)])
            assert res[0].ok, (trick, res)  # the filter let it through and it got os ...
            assert res[0].value == "read blocked / write blocked", (trick, res)  # ... and no further
    assert not (tmp_path / "secret.txt.planted").exists()


# ---- attack class: forking without a uid of its own --------------------------------------------

FORKS = (
    "import os, time\n"
    "def evaluate(limit):\n"
    "    n = 0\n"
    "    try:\n"
    "        while n < limit:\n"
    "            if os.fork() == 0:\n"
    "                time.sleep(30)\n"
    "                os._exit(0)\n"
    "            n += 1\n"
    "    except OSError:\n"
    "        pass\n"
    "    return n\n"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="job cgroups need root")
async def test_process_count_is_bounded_by_the_pids_cgroup_without_a_dedicated_uid():
    # Without the setuid layer RLIMIT_NPROC cannot apply (it would count the host user's
    # processes); the job cgroup's pids limit bounds the job and all it starts instead.
    async with _pool("setuid", max_procs=16) as p:
        assert p.stats()["isolation"]["fork_limit"] and "setuid" in p.stats()["degraded"]
        res = await p.evaluate(FORKS, [60])
        assert res[0].ok and res[0].value < 16, res
        await _answers_honestly(p)
    async with _pool("setuid", "job_cgroup", max_procs=16) as p:  # control: nothing counts them
        assert "fork_limit" in p.stats()["degraded"]
        assert (await p.evaluate(FORKS, [60]))[0].value == 60
