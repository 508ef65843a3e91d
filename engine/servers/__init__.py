"""LLM server management: a generic managed process (`ManagedServer`, `ServerGroup`) and
backends for llama.cpp (the embedded CPU default), SGLang (GPU nodes) and the simulator."""
from __future__ import annotations

from typing import Sequence

from engine.servers.llamacpp import (EmbeddedUnavailable, LlamaCppServer, default_embedded_server,
                                     default_model_path,
                                     embedded_available, find_llama_server, llamacpp_command,
                                     llamacpp_server)
from engine.servers.manager import (ManagedServer, ServerConfig, ServerError, ServerGroup, ServerStartError,
                                    free_port, kill_all_servers)
from engine.servers.sglang import require_sglang, sglang_available, sglang_command, sglang_server
from engine.servers.backend import open_backend
from engine.servers.sim import sim_command, sim_server

BACKENDS = ("llamacpp", "sglang", "sim")

__all__ = [
    "BACKENDS", "EmbeddedUnavailable", "LlamaCppServer", "ManagedServer", "ServerConfig", "ServerError",
    "ServerGroup", "ServerStartError", "build_group", "build_server", "default_embedded_server",
    "default_model_path", "embedded_available", "find_llama_server", "free_port",
    "kill_all_servers", "llamacpp_command", "open_backend", "llamacpp_server", "require_sglang",
    "sglang_available", "sglang_command", "sglang_server", "sim_command", "sim_server",
]


def build_server(backend: str, run_dir, *, model: str | None = None, parallel: int = 8, tp: int = 1,
                 port: int | None = None, mem_fraction: float | None = None,
                 extra: Sequence[str] = (), replica: int | None = None, **kw) -> ManagedServer:
    """One server of the named backend, from CLI-style options."""
    if backend == "llamacpp":
        return llamacpp_server(run_dir, model, parallel=parallel, port=port, replica=replica,
                               extra=extra, **kw)
    if backend == "sglang":
        return sglang_server(run_dir, model or "", tp=tp, mem_fraction=mem_fraction, port=port,
                             replica=replica, extra=extra, **kw)
    if backend == "sim":
        return sim_server(run_dir, port=port, replica=replica, extra=extra, **kw)
    raise ServerError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def build_group(backend: str, run_dir, *, replicas: int = 1, port: int | None = None,
                **kw) -> ServerGroup:
    """R replicas on R ports (port, port+1, ... when a base port is given; free ports otherwise).
    SGLang replicas get disjoint GPU sets via CUDA_VISIBLE_DEVICES."""
    if replicas < 1:
        raise ServerError("--replicas must be at least 1")
    if replicas == 1:
        return ServerGroup([build_server(backend, run_dir, port=port, **kw)])
    return ServerGroup.replicate(
        lambda i: build_server(backend, run_dir, port=None if port is None else port + i,
                               replica=i, **kw), replicas)
