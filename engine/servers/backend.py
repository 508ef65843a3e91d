"""The one place a job's backend is chosen: the servers it was given, the SGLang simulator (a
test double), or the embedded llama.cpp server."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator

from engine.config import Config
from engine.errors import JobError

log = logging.getLogger("autoif.job")


@contextlib.asynccontextmanager
async def open_backend(cfg: Config, backend: str, run_dir: Path) -> AsyncIterator[tuple[list[str], str]]:
    """Yields (server URLs, api) for the job, starting a server when none is configured."""
    if cfg.run.servers:
        yield list(cfg.run.servers), cfg.run.api
        return
    if backend == "sim":
        from engine.servers.sim import in_process_sim
        async with in_process_sim(cfg.run.sim_speed) as url:
            log.info("started the SGLang simulator (a test double) at %s", url)
            yield [url], "sglang"
        return
    try:
        from engine.servers.llamacpp import default_embedded_server
    except ImportError as exc:
        raise JobError(f"no server given and the embedded server is unavailable ({exc})") from None
    try:
        server = default_embedded_server(run_dir)
    except Exception as exc:  # missing extra, model, binary: the manager says which in one line
        raise JobError(str(exc)) from None
    async with server as srv:
        log.info("started the embedded llama.cpp server at %s (log: %s)", srv.url,
                 getattr(srv, "log_path", run_dir))
        yield [srv.url], "openai"
