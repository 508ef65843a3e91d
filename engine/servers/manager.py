"""A managed LLM server process: start, wait until healthy, watch, restart, stop -- never orphan.

`ManagedServer` runs one server command (llama-server, SGLang, the simulator) on a local port,
with its stdout/stderr appended to `<run_dir>/<name>.log`; a `ServerConfig` holds where it runs
and how it is kept up. It is async first
(`async with ManagedServer(command, ServerConfig(run_dir)) as srv: srv.url`) and has a sync face
for CLIs (`srv.start_sync()` / `srv.stop_sync()`, or `with srv:`), which hosts the same async
code on a private event-loop thread.

No orphans: each server runs in its own session / process group, and stop() signals the whole
group (SIGTERM, then SIGKILL after a grace period), so workers the server forked die with it.
Servers are spawned from the event-loop thread, which outlives them, so the PDEATHSIG, reaper
and exit-hook layers of engine.servers.orphans hold whatever way the engine ends.
`ServerGroup` runs R replicas and exposes their URLs for the client's balancer.
"""
from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Coroutine, Iterable, Sequence, TextIO, TypeVar

import aiohttp

from engine.errors import ServerError, ServerStartError
from engine.servers import orphans
from engine.servers.orphans import kill_all_servers

__all__ = ["ServerError", "ServerStartError", "ManagedServer", "ServerConfig", "ServerGroup", "free_port",
           "port_free", "kill_all_servers"]

T = TypeVar("T")


# ---------------------------------------------------------------- ports

_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port. Ports handed out earlier in this process are not reused, so a
    group starting several servers at once does not get the same port twice."""
    with _port_lock:
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ServerError("could not find a free local port")


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------- sync bridge

class _LoopThread:
    """An event loop on a private thread, so sync callers can drive the async manager.
    The thread lives until close(): the servers it spawns keep their PDEATHSIG parent."""

    def __init__(self, name: str = "autoif-servers") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[object, object, T]) -> T:
        finished = threading.Event()

        async def tracked() -> T:
            try:
                return await coro
            finally:
                finished.set()

        fut = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        try:
            return fut.result()
        except BaseException:
            if not fut.done():  # interrupted while waiting (Ctrl-C): cancel it and let it clean up
                fut.cancel()
                finished.wait(timeout=30)
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


# ---------------------------------------------------------------- the manager

def _log_tail(path: Path, since: int = 0, lines: int = 3, limit: int = 400) -> str:
    """The last few non-empty log lines (written after offset `since`) joined into one line,
    for one-line errors."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(since, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("=== ")]
    out = " | ".join(tail[-lines:])
    return out if len(out) <= limit else "..." + out[-limit:]


Command = Callable[[int], Sequence[str]] | Sequence[str]


class _SyncLifecycle:
    """start_sync/stop_sync and `with` for CLIs: the async start()/stop() run on a private
    event-loop thread. Subclasses define start(), stop() and `_bg_name`."""

    _bg = None
    _bg_name = "server"

    def start_sync(self):
        orphans.install_signal_hooks()  # here, on the caller's (main) thread; start() runs on the loop's
        self._bg = _LoopThread(self._bg_name)
        try:
            self._bg.run(self.start())
        except BaseException:
            try:
                self._bg.run(self.stop())
            finally:
                self._bg.close()
                self._bg = None
            raise
        return self

    def stop_sync(self) -> None:
        if self._bg is None:
            return
        try:
            self._bg.run(self.stop())
        finally:
            self._bg.close()
            self._bg = None

    def __enter__(self):
        return self.start_sync()

    def __exit__(self, *exc) -> None:
        self.stop_sync()


@dataclass(frozen=True)
class ServerConfig:
    """Where a managed server runs and how it is kept up.

    run_dir: holds `<name>.log`. port: fixed port, or None for a free one (kept across
    restarts, so the URL is stable). health_path: polled with GET until it answers 200
    (llama-server answers 503 while loading). env: added to the environment.
    max_restarts: restarts allowed within restart_window seconds after crashes; past that the
        server is marked failed (`failed`, `error`). Backoff doubles from restart_backoff.
    hang_timeout: if set, a running server whose health check has failed for this long is
        treated as hung, killed and restarted; health_interval: seconds between those checks.
    stop_grace: seconds between SIGTERM and SIGKILL on stop.
    stream_log: True (stderr) or a text stream to copy the log to, each line prefixed by name.
    api / model: carried for the client ("openai" for llama-server, "sglang" for SGLang).
    """

    run_dir: str | os.PathLike
    name: str = "server"
    host: str = "127.0.0.1"
    port: int | None = None
    health_path: str = "/health"
    env: dict[str, str] | None = None
    cwd: str | None = None
    startup_timeout: float = 120.0
    max_restarts: int = 3
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0
    restart_window: float = 600.0
    stop_grace: float = 10.0
    hang_timeout: float | None = None
    health_interval: float = 2.0
    stream_log: bool | TextIO = False
    api: str = "sglang"
    model: str = "default"


class ManagedServer(_SyncLifecycle):
    """One server process on 127.0.0.1, kept healthy as `config` says.

    command: argv, or a function port -> argv (a plain argv may use "{port}" placeholders).
    """

    def __init__(self, command: Command, config: ServerConfig) -> None:
        self._command = command
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.name = config.name
        self._bg_name = f"server-{config.name}"
        self.host = config.host
        self._fixed_port = config.port
        self.port: int | None = config.port
        self.api = config.api
        self.model = config.model
        self.log_path = self.run_dir / f"{config.name}.log"

        self.state = "new"          # new | starting | running | restarting | failed | stopped
        self.restarts = 0
        self.error: str | None = None
        self.pids: list[int] = []   # every pid this server has had, newest last
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._session: aiohttp.ClientSession | None = None
        self._monitor_task: asyncio.Task | None = None
        self._tail_task: asyncio.Task | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self._stopping = False
        self._spawn_offset = 0      # log offset where the current process's output starts
        self._healthy: asyncio.Event | None = None
        self._bg: _LoopThread | None = None

    # ---- public state

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError(f"{self.name}: not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def argv(self, port: int) -> list[str]:
        cmd = self._command(port) if callable(self._command) else self._command
        return [str(a).replace("{port}", str(port)) for a in cmd]

    async def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until the server is up again after a restart (or raise if it failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state != "running" or self._healthy is None or not self._healthy.is_set():
            if self.state in ("failed", "stopped"):
                raise ServerError(self.error or f"{self.name} is {self.state}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not healthy within {timeout}s")
            await asyncio.sleep(0.05)

    # ---- async lifecycle

    async def __aenter__(self) -> "ManagedServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> "ManagedServer":
        if self.state not in ("new", "stopped", "failed"):
            raise ServerError(f"{self.name} is already {self.state}")
        orphans.install_signal_hooks()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab", buffering=0)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._healthy = asyncio.Event()
        self._stopping = False
        self.state, self.error, self.restarts = "starting", None, 0
        self._restart_times.clear()
        if self.config.stream_log:
            self._tail_task = asyncio.create_task(self._tail_log())
        try:
            # An auto-picked port can be taken between picking and binding: retry on a new one.
            for attempt in range(3):
                self.port = self._fixed_port or free_port(self.host)
                try:
                    await self._launch_and_wait()
                    break
                except ServerStartError as exc:
                    low = str(exc).lower()
                    in_use = "already in use" in low or "bind" in low
                    if self._fixed_port is not None or not in_use or attempt == 2:
                        raise
        except BaseException as exc:
            await self._shutdown_process(grace=1.0)
            self.state = "failed"
            self.error = str(exc) if isinstance(exc, ServerError) else f"{self.name}: {exc!r}"
            await self._close_resources()
            raise
        self.state = "running"
        self._monitor_task = asyncio.create_task(self._monitor(), name=f"monitor-{self.name}")
        return self

    async def stop(self) -> None:
        if self.state in ("new", "stopped"):
            return
        self._stopping = True
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            try:
                await self._monitor_task
            except (asyncio.CancelledError, Exception):
                pass
            self._monitor_task = None
        await self._shutdown_process(grace=self.config.stop_grace)
        if self.state != "failed":
            self.state = "stopped"
        await self._close_resources()

    # ---- sync lifecycle (for CLIs)


    # ---- internals

    def _spawn(self) -> None:
        assert self.port is not None and self._log is not None
        argv = self.argv(self.port)
        env = None if self.config.env is None else {**os.environ, **self.config.env}
        self._log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.name} start "
                        f"(restart {self.restarts}): {' '.join(argv)}\n".encode())
        self._spawn_offset = os.fstat(self._log.fileno()).st_size
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=env, cwd=self.config.cwd, close_fds=True, start_new_session=True,
                preexec_fn=orphans.child_preexec(os.getpid()))
        except OSError as exc:
            raise ServerStartError(f"{self.name}: cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        self._proc = proc
        self.pids.append(proc.pid)
        orphans.register(proc)

    async def _health_ok(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(self.url + self.config.health_path,
                                         timeout=aiohttp.ClientTimeout(total=3)) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def _launch_and_wait(self) -> None:
        # Otherwise another server already on the port would answer our health checks.
        if not port_free(self.host, self.port):
            raise ServerStartError(f"{self.name}: port {self.port} on {self.host} is already in use")
        self._spawn()
        proc = self._proc
        assert proc is not None
        t0 = time.monotonic()
        delay = 0.05
        while True:
            rc = proc.poll()
            if rc is not None:
                orphans.forget(proc)
                orphans.killpg(proc.pid, orphans.SIGKILL)  # leftovers in its group
                raise ServerStartError(
                    f"{self.name} exited with code {rc} during startup (log {self.log_path}): "
                    f"{_log_tail(self.log_path, self._spawn_offset) or 'no output'}", returncode=rc)
            if await self._health_ok():
                self._healthy.set()
                return
            if time.monotonic() - t0 > self.config.startup_timeout:
                await self._shutdown_process(grace=2.0)
                raise ServerStartError(
                    f"{self.name} not healthy after {self.config.startup_timeout:g}s at {self.url}{self.config.health_path} "
                    f"(log {self.log_path}): {_log_tail(self.log_path, self._spawn_offset) or 'no output'}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def _monitor(self) -> None:
        """Watch the process; on exit (or hang) restart it per the policy."""
        last_ok = time.monotonic()
        next_check = last_ok + self.config.health_interval
        while not self._stopping:
            await asyncio.sleep(0.1)
            proc = self._proc
            assert proc is not None
            rc = proc.poll()
            if rc is None:
                if self.config.hang_timeout is None or time.monotonic() < next_check:
                    continue
                next_check = time.monotonic() + self.config.health_interval
                if await self._health_ok():
                    last_ok = time.monotonic()
                    continue
                if time.monotonic() - last_ok < self.config.hang_timeout:
                    continue
                reason = f"unresponsive for {self.config.hang_timeout:g}s"
            else:
                reason = f"exited with code {rc}"
            if self._stopping:
                return
            self._healthy.clear()
            self.state = "restarting"
            self._note(f"{self.name} (pid {proc.pid}) {reason}")
            await self._shutdown_process(grace=0.0)
            if not await self._restart(reason):
                return
            last_ok = time.monotonic()
            next_check = last_ok + self.config.health_interval

    async def _restart(self, reason: str) -> bool:
        while True:
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > self.config.restart_window:
                self._restart_times.popleft()
            if len(self._restart_times) >= self.config.max_restarts:
                self.state = "failed"
                self.error = (f"{self.name} {reason}; gave up after {self.config.max_restarts} restart(s) "
                              f"(log {self.log_path}): {_log_tail(self.log_path, self._spawn_offset) or 'no output'}")
                self._note(self.error)
                return False
            delay = min(self.config.restart_backoff * 2 ** len(self._restart_times),
                        self.config.restart_backoff_max)
            await asyncio.sleep(delay)
            self._restart_times.append(time.monotonic())
            self.restarts += 1
            try:
                await self._launch_and_wait()
            except ServerStartError as exc:
                reason = f"failed to restart ({exc})"
                continue
            self.state = "running"
            self._note(f"{self.name} restarted (restart {self.restarts}) at {self.url}")
            return True

    async def _shutdown_process(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds, reap the leader."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            orphans.killpg(proc.pid, signal.SIGTERM if grace > 0 else orphans.SIGKILL)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        orphans.killpg(proc.pid, orphans.SIGKILL)  # the leader, if it ignored SIGTERM, and any stragglers
        for _ in range(100):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        orphans.forget(proc)

    def _note(self, line: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n".encode())
        if self.config.stream_log:
            print(f"[{self.name}] {line}", file=self._stream(), flush=True)

    def _stream(self) -> TextIO:
        return sys.stderr if self.config.stream_log is True else self.config.stream_log  # type: ignore[return-value]

    async def _tail_log(self) -> None:
        """Copy new log lines to the stream, prefixed by the server name."""
        out = self._stream()
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            buf = b""
            while True:
                chunk = f.read(65536)
                if not chunk:
                    if self.state in ("stopped", "failed") and self._stopping:
                        return
                    await asyncio.sleep(0.2)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    if not ln.startswith(b"=== "):
                        out.write(f"[{self.name}] {ln.decode('utf-8', 'replace')}\n")
                out.flush()

    async def _close_resources(self) -> None:
        if self._tail_task is not None:
            await asyncio.sleep(0.25)  # let the tail copy the last lines
            self._tail_task.cancel()
            try:
                await self._tail_task
            except (asyncio.CancelledError, Exception):
                pass
            self._tail_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._log is not None:
            self._log.close()
            self._log = None


class ServerGroup(_SyncLifecycle):
    """R managed servers (replicas), started and stopped together; `urls` feeds the balancer."""

    _bg_name = "server-group"

    def __init__(self, servers: Iterable[ManagedServer]) -> None:
        self.servers = list(servers)
        if not self.servers:
            raise ValueError("ServerGroup needs at least one server")
        self._bg: _LoopThread | None = None

    @classmethod
    def replicate(cls, factory: Callable[[int], ManagedServer], replicas: int) -> "ServerGroup":
        return cls(factory(i) for i in range(replicas))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def live_urls(self) -> list[str]:
        return [s.url for s in self.servers if s.running]

    @property
    def failed(self) -> bool:
        """True once every replica has given up."""
        return all(s.failed for s in self.servers)

    async def start(self) -> "ServerGroup":
        results = await asyncio.gather(*(s.start() for s in self.servers), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)

    async def __aenter__(self) -> "ServerGroup":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

