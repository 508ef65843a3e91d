"""Containment: leftover processes, network, filesystem, secrets, privileges, degraded modes.

Where a protection has more than one layer, a control pool with the layers switched off shows
that the attack in the test really works without them, so the test can tell the difference.
"""

import ast
import asyncio
import logging
import os
import shutil
import socket
import tempfile

import pytest
import pytest_asyncio

from sandbox_pool import DEFAULT_ALLOWED_MODULES, Limits, PoolConfig, SandboxPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Set at import (collection), before any pool or forkserver of this test session starts.
SENTINEL_NAME = "SANDBOX_POOL_TEST_SECRET"
SENTINEL_VALUE = "sentinel-7f3a9c1e5b"
os.environ[SENTINEL_NAME] = SENTINEL_VALUE

HOSTILE = DEFAULT_ALLOWED_MODULES | {"os", "sys", "time", "socket"}
TIMEOUT = 2.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    async with SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:
        yield p


def _pool(*disabled, workers=1, **limits):
    return SandboxPool(PoolConfig(workers=workers, limits=Limits(
        timeout_s=TIMEOUT, allowed_modules=HOSTILE, disable_layers=disabled, max_value_chars=1 << 20, **limits)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


# ---- nothing outlives its job ----------------------------------------------------------------

ESCAPE = (
    "import os, time\n"
    "def evaluate(x):\n"
    "    r, w = os.pipe()\n"
    "    child = os.fork()\n"
    "    if child == 0:\n"
    "        os.setsid()  # leave the job's session, then orphan a grandchild\n"
    "        if os.fork() == 0:\n"
    "            os.write(w, f'{os.getpid()} {os.readlink(\"/proc/self\")}'.encode())\n"
    "            time.sleep(120)\n"
    "            os._exit(0)\n"
    "        os._exit(0)\n"
    "    os.waitpid(child, 0)\n"
    "    local, host = map(int, os.read(r, 64).split())\n"
    "    os.kill(local, 0)  # the daemonised grandchild is alive while the job returns\n"
    "    return host\n"
)


async def _check_no_escape(p):
    res = await p.evaluate(ESCAPE, [0])
    assert res[0].ok, res
    host_pid = res[0].value
    assert isinstance(host_pid, int) and host_pid > 1
    assert not _alive(host_pid), f"grandchild {host_pid} survived its job"


async def test_daemonised_grandchild_is_killed_with_its_job(pool):
    for _ in range(2):
        await _check_no_escape(pool)


async def test_degraded_without_pid_namespace_still_kills_leftovers(caplog):
    caplog.set_level(logging.WARNING, logger="sandbox_pool")
    async with _pool("pid_namespace", "landlock") as p:
        stats = p.stats()
        assert stats["degraded"] == ["pid_namespace", "landlock_fs", "landlock_net", "landlock_scope"]
        assert stats["isolation"]["pid_namespace"] is False and stats["isolation"]["setuid"] is True
        warned = [r.getMessage() for r in caplog.records if r.name == "sandbox_pool"]
        assert len(warned) == 4 and all("unavailable" in m for m in warned)
        await _check_no_escape(p)  # fallback: uid-wide kill(-1) from a helper with the job's uid
    # Without the job cgroup too: its pids controller would otherwise still bound forks.
    async with _pool("pid_namespace", "setuid", "landlock", "job_cgroup") as p:
        assert {"pid_namespace", "setuid", "fork_limit"} <= set(p.stats()["degraded"])
        await _check_no_escape(p)  # fallback: subreaper + descendant sweep


# ---- network -----------------------------------------------------------------------------------

NET = (
    "import socket\n"
    "def evaluate(target):\n"
    "    kind, addr = target\n"
    "    try:\n"
    "        if kind == 'tcp':\n"
    "            s = socket.create_connection(('127.0.0.1', addr), timeout=0.5)\n"
    "        elif kind == 'udp':\n"
    "            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "            s.sendto(b'leak', ('127.0.0.1', addr))\n"
    "        else:\n"
    "            s = socket.socket(socket.AF_UNIX)\n"
    "            s.connect('\\0' + addr)\n"
    "        s.close()\n"
    "        return 'connected'\n"
    "    except OSError as e:\n"
    "        return 'blocked: ' + type(e).__name__\n"
)


@pytest.fixture
def listeners():
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    unix = socket.socket(socket.AF_UNIX)
    name = f"sandbox-pool-test-{os.getpid()}"
    unix.bind("\0" + name)
    unix.listen(8)
    unix.setblocking(False)
    yield {"tcp": (tcp, tcp.getsockname()[1]), "udp": (udp, udp.getsockname()[1]), "unix": (unix, name)}
    for s in (tcp, udp, unix):
        s.close()


def _received(sock) -> bool:
    try:
        if sock.type == socket.SOCK_DGRAM:
            sock.recv(16)
        else:
            sock.accept()[0].close()
        return True
    except BlockingIOError:
        return False


async def test_no_network(pool, listeners):
    res = await pool.evaluate(NET, [[k, addr] for k, (_s, addr) in listeners.items()])
    assert [o.value[:8] for o in res] == ["blocked:"] * 3, res
    await asyncio.sleep(0.05)
    assert not any(_received(s) for s, _ in listeners.values())


async def test_each_network_layer_blocks_tcp_alone_and_control_connects(listeners):
    tcp, port = listeners["tcp"]
    for disabled in (("landlock",), ("net_namespace",)):
        async with _pool(*disabled) as p:
            res = await p.evaluate(NET, [["tcp", port]])
            assert res[0].value.startswith("blocked"), (disabled, res)
    assert not _received(tcp)
    async with _pool("landlock", "net_namespace") as p:  # control: the attack itself works
        res = await p.evaluate(NET, [["tcp", port]])
        assert res[0].value == "connected"
    assert _received(tcp)


# ---- filesystem --------------------------------------------------------------------------------

FS = (
    "import os\n"
    "def evaluate(arg):\n"
    "    op, d = arg\n"
    "    victim = os.path.join(d, 'victim.txt')\n"
    "    try:\n"
    "        if op == 'create': open(os.path.join(d, 'new.txt'), 'w').write('x')\n"
    "        elif op == 'overwrite': open(victim, 'w').write('pwned')\n"
    "        elif op == 'append': open(victim, 'a').write('pwned')\n"
    "        elif op == 'truncate': os.truncate(victim, 0)\n"
    "        elif op == 'delete': os.remove(victim)\n"
    "        elif op == 'rename': os.rename(victim, victim + '.moved')\n"
    "        elif op == 'mkdir': os.mkdir(os.path.join(d, 'sub'))\n"
    "        elif op == 'symlink': os.symlink('/etc/passwd', os.path.join(d, 'link'))\n"
    "        elif op == 'read': return 'read: ' + open(victim).read()\n"
    "        elif op == 'cwd':\n"
    "            open('mine.txt', 'w').write('scratch ok')\n"
    "            os.mkdir('sub')\n"
    "            return os.getcwd() + '|' + open('mine.txt').read()\n"
    "        return 'done'\n"
    "    except OSError as e:\n"
    "        return 'denied: ' + type(e).__name__\n"
)
FS_ATTACKS = ["create", "overwrite", "append", "truncate", "delete", "rename", "mkdir", "symlink", "read"]


@pytest.fixture
def victim_dir():
    # Not under /tmp (pytest's tmp dirs are 0700 there, so DAC alone would stop the job) and
    # world-writable on purpose: only the sandbox stands between the job and these files.
    base = "/var/tmp" if os.path.isdir("/var/tmp") else os.path.dirname(__file__)
    d = tempfile.mkdtemp(prefix="sandbox-fs-", dir=base)
    os.chmod(d, 0o777)
    with open(os.path.join(d, "victim.txt"), "w") as f:
        f.write("original")
    os.chmod(os.path.join(d, "victim.txt"), 0o666)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_filesystem_writes_confined_to_scratch(pool, victim_dir):
    res = await pool.evaluate(FS, [[op, victim_dir] for op in FS_ATTACKS] + [["cwd", victim_dir]])
    for op, o in zip(FS_ATTACKS, res):
        assert o.value.startswith("denied"), (op, o)
    assert sorted(os.listdir(victim_dir)) == ["victim.txt"]
    with open(os.path.join(victim_dir, "victim.txt")) as f:
        assert f.read() == "original"
    scratch, _, content = res[-1].value.partition("|")
    assert content == "scratch ok" and scratch.startswith("/")


SCRATCH = (
    "import os\n"
    "def evaluate(arg):\n"
    "    if arg == 'write':\n"
    "        open('left-behind.txt', 'w').write('x')\n"
    "        os.mkdir('d')\n"
    "        open('d/f', 'w').write('y')\n"
    "        os.chmod('d', 0)  # try to make it hard to remove\n"
    "        return os.getcwd()\n"
    "    return repr((os.path.exists(arg), os.getcwd() != arg, os.listdir('.')))\n"
)


@pytest.mark.parametrize("disabled", [(), ("scratch_quota",)], ids=["own-tmpfs", "plain-dir"])
async def test_scratch_is_fresh_per_job_and_removed(disabled):
    async with _pool(*disabled) as p:  # one worker: the second job runs where the first did
        first = (await p.evaluate(SCRATCH, ["write"]))[0].value
        later = ast.literal_eval((await p.evaluate(SCRATCH, [first]))[0].value)
        assert later == (False, True, [])  # the old dir is gone and the new one starts empty
        if disabled:  # without a private tmpfs the host sees the same path
            assert not os.path.exists(first)


QUOTA = (
    "def evaluate(n):\n"
    "    try:\n"
    "        for i in range(n):\n"
    "            with open(f'f{i}', 'wb') as f:\n"
    "                f.write(b'x' * (1 << 20))\n"
    "        return 'wrote all'\n"
    "    except OSError as e:\n"
    "        return f'stopped: errno {e.errno}'\n"
)


async def test_scratch_space_is_capped_in_total():
    async with _pool(max_scratch_mb=4) as p:  # 1 MiB files stay under max_file_mb; the total does not
        assert (await p.evaluate(QUOTA, [8]))[0].value == "stopped: errno 28"  # ENOSPC
        assert (await p.evaluate(QUOTA, [2]))[0].value == "wrote all"
    async with _pool("scratch_quota", max_scratch_mb=4) as p:  # control: nothing caps the total
        assert (await p.evaluate(QUOTA, [8]))[0].value == "wrote all"


async def test_filesystem_control_without_landlock(victim_dir):
    async with _pool("landlock") as p:  # control: the same job does damage without Landlock
        res = await p.evaluate(FS, [["create", victim_dir], ["read", victim_dir]])
        assert res[0].value == "done" and res[1].value == "read: original"
    assert "new.txt" in os.listdir(victim_dir)


# ---- secrets and privileges --------------------------------------------------------------------

SECRETS = (
    "import os\n"
    "def evaluate(x):\n"
    "    try:\n"
    "        raw = open('/proc/self/environ', 'rb').read().decode('latin-1')\n"
    "    except OSError as e:\n"
    "        raw = 'unreadable: ' + type(e).__name__\n"
    "    return repr((dict(os.environ), raw))\n"
)


async def test_environment_is_empty_inside(pool):
    assert os.environ[SENTINEL_NAME] == SENTINEL_VALUE
    env, raw = ast.literal_eval((await pool.evaluate(SECRETS, [0]))[0].value)
    assert env == {}
    assert SENTINEL_VALUE not in raw and SENTINEL_NAME not in raw


async def test_environ_block_is_scrubbed_and_control_leaks():
    # Without setuid/Landlock the job may read its own /proc/self/environ: only the scrub protects.
    async with _pool("setuid", "landlock") as p:
        env, raw = ast.literal_eval((await p.evaluate(SECRETS, [0]))[0].value)
        assert not raw.startswith("unreadable") and env == {}
        assert SENTINEL_VALUE not in raw
    async with _pool("setuid", "landlock", "env_scrub") as p:  # control: the secret is really there
        env, raw = ast.literal_eval((await p.evaluate(SECRETS, [0]))[0].value)
        assert env.get(SENTINEL_NAME) == SENTINEL_VALUE and SENTINEL_VALUE in raw


async def test_jobs_run_unprivileged_with_a_uid_per_worker(pool):
    code = (
        "import os, time\n"
        "def evaluate(x):\n"
        "    time.sleep(0.1)\n"
        "    return f\"{os.readlink('/proc/self/ns/pid')} {os.getuid()} {os.geteuid()} {os.getgroups()}\"\n"
    )
    results = await pool.evaluate_many([(code, [i]) for i in range(6)])
    seen = {}
    for r in results:
        ns, uid, euid, groups = r[0].value.split(" ", 3)
        assert uid == euid and int(uid) >= 61000 and groups == "[]"
        seen.setdefault(ns, set()).add(uid)
    assert len(seen) == 2 and all(len(u) == 1 for u in seen.values())
    assert len(set.union(*seen.values())) == 2  # distinct uid per worker
