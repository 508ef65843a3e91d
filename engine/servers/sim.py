"""Simulator backend: `autoif sim` (an SGLang protocol double) as a real subprocess, so the
whole lifecycle -- health wait, crash, restart, stop, orphan protection -- is testable cheaply."""
from __future__ import annotations

import contextlib
import sys
from typing import AsyncIterator, Sequence

from engine.servers.manager import ManagedServer, ServerConfig


def sim_command(port: int, *, host: str = "127.0.0.1", extra: Sequence[str] = (),
                python: str = sys.executable) -> list[str]:
    return [python, "-m", "engine.cli", "sim", "--host", host, "--port", str(port), *extra]


def sim_server(run_dir, *, port: int | None = None, replica: int | None = None,
               extra: Sequence[str] = (), startup_timeout: float = 30.0, **kw) -> ManagedServer:
    """A ManagedServer running the simulator; `kw`: more ServerConfig fields."""
    name = kw.pop("name", "sim" if replica is None else f"sim-{replica}")
    return ManagedServer(lambda p: sim_command(p, extra=extra),
                         ServerConfig(run_dir, name=name, port=port, health_path="/health",
                                      startup_timeout=startup_timeout, api="sglang",
                                      model=kw.pop("model", "sim"), **kw))


@contextlib.asynccontextmanager
async def in_process_sim(speed: float = 1.0) -> AsyncIterator[str]:
    """The simulator in this process, answering with the AutoIF fixture; yields its URL.
    `speed` divides its delays; 0 answers at once."""
    from engine.sim.config import LatencyModel, SimConfig
    from engine.sim.responders import AUTOIF_FIXTURE
    from engine.sim.server import SimServer
    latency = LatencyModel(speed=speed) if speed > 0 else LatencyModel(zero_latency=True)
    async with SimServer(SimConfig(responder=str(AUTOIF_FIXTURE), latency=latency)) as sim:
        yield sim.url
