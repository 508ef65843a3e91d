"""SGLang backend: `python -m sglang.launch_server` under the manager (GPU nodes)."""
from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

from engine.servers.manager import ManagedServer, ServerConfig, ServerError

INSTALL_HINT = "SGLang is not installed: pip install 'autoif-engine[sglang]'"


def sglang_available() -> bool:
    return importlib.util.find_spec("sglang") is not None


def require_sglang() -> None:
    if not sglang_available():
        raise ServerError(INSTALL_HINT)


def sglang_command(port: int, model: str, *, tp: int = 1, mem_fraction: float | None = None,
                   host: str = "127.0.0.1", extra: Sequence[str] = (),
                   python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "sglang.launch_server", "--model-path", model, "--tp", str(tp),
           "--host", host, "--port", str(port)]
    if mem_fraction is not None:
        cmd += ["--mem-fraction-static", f"{mem_fraction:g}"]
    return cmd + list(extra)


def replica_gpus(replica: int, tp: int) -> str:
    """Replica i with tensor parallelism tp gets GPUs [i*tp, (i+1)*tp)."""
    return ",".join(str(g) for g in range(replica * tp, (replica + 1) * tp))


def sglang_server(run_dir, model: str, *, tp: int = 1, mem_fraction: float | None = None,
                  port: int | None = None, replica: int | None = None, gpus: str | None = None,
                  extra: Sequence[str] = (), startup_timeout: float = 1800.0,
                  check_installed: bool = True, **kw) -> ManagedServer:
    """A ManagedServer running SGLang. With `replica` (and no explicit `gpus`), the server is
    pinned to its own GPU set through CUDA_VISIBLE_DEVICES. Loading big models takes minutes,
    hence the long startup timeout. `kw`: more ServerConfig fields."""
    if check_installed:
        require_sglang()
    if not model:
        raise ServerError("sglang backend needs --model (a Hugging Face id or a local path)")
    env = dict(kw.pop("env", None) or {})
    if gpus is None and replica is not None:
        gpus = replica_gpus(replica, tp)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    name = kw.pop("name", "sglang" if replica is None else f"sglang-{replica}")
    return ManagedServer(
        lambda p: sglang_command(p, model, tp=tp, mem_fraction=mem_fraction, extra=extra),
        ServerConfig(run_dir, name=name, port=port, health_path="/health", env=env or None,
                     startup_timeout=startup_timeout, api="sglang", model=model, **kw))
