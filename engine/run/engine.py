"""The engine a run works with: an LLM client, a sandbox pool and the stage context.

`open_engine` is the one place a run (single node, one Ray shard, a benchmark) builds them.
What a run needs of the client and the pool is written down as Protocols, so a test or a
benchmark may hand in anything that behaves the same way.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Protocol, Sequence

import aiohttp

from engine.cache import CachedLLM
from engine.client import LLMClient, RetryPolicy, Timeouts
from engine.config import Config
from engine.errors import JobError
from engine.llm import LLM
from engine.roles import ROLES, unnamed
from engine.run.store import RunStore
from engine.servers import open_backend
from engine.stage import Context, Executor
from engine.stats import sum_numbers
from sandbox_pool import Limits, Outcome, PoolConfig, SandboxPool

log = logging.getLogger("autoif.job")


class Client(LLM, Protocol):
    """What a run needs of its LLM client: the LLM calls, its HTTP session (health and model
    probes) and its counters."""

    @property
    def session(self) -> aiohttp.ClientSession: ...

    def stats(self) -> dict: ...


class Pool(Executor, Protocol):
    """What a run needs of its sandbox pool: jobs, a worker count and counters."""

    n_workers: int

    def stats(self) -> dict: ...


@dataclass
class Engine:
    """`client` and `pool` are None where a run has none (`autoif stage` answering from a file).
    `role_clients`: the client of each role (engine.roles) with its own servers or model."""

    ctx: Context
    client: Client | None = None
    pool: Pool | None = None
    role_clients: dict[str, Client] = field(default_factory=dict)

    def clients(self) -> list[Client]:
        """Every distinct client, the run's first."""
        out = [self.client] if self.client is not None else []
        for c in self.role_clients.values():
            if all(c is not o for o in out):
                out.append(c)
        return out

    def client_stats(self) -> dict:
        """The clients' counters added up; `servers` holds every server of every role."""
        parts = [c.stats() for c in self.clients()]
        if len(parts) <= 1:
            return parts[0] if parts else {}
        out = sum_numbers(parts)
        out["servers"] = {url: s for p in parts for url, s in p.get("servers", {}).items()}
        return out

    def context(self, state: object, namespace: str = "") -> Context:
        """A fresh stage context over these clients (`namespace`: see cached_context)."""
        return cached_context(self.client, self.role_clients, self.pool, state, namespace)

    def pool_stats(self) -> dict:
        return self.pool.stats() if self.pool is not None else {}

    def counters(self) -> dict:
        """The client's and pool's running totals that the progress line and metrics show."""
        c, p = self.client_stats(), self.pool_stats()
        return {"requests": c.get("requests", 0), "completion_tokens": c.get("completion_tokens", 0),
                "checks": p.get("checks", 0), "pool_busy_s": p.get("busy_s", 0.0)}


def cached_context(client: Client, role_clients: dict[str, Client], executor: Executor, state: object,
                   namespace: str = "") -> Context:
    """The stage context: each client behind the run's LLM cache in `state`, one cache front per
    client, so roles that share a client share its in-flight requests too. `namespace`: answers
    of their own (an online-DPO round samples afresh)."""
    cached = {id(c): CachedLLM(c, state, namespace=namespace) for c in [client, *role_clients.values()]}
    return Context(llm=cached[id(client)], executor=executor,
                   roles={role: cached[id(c)] for role, c in role_clients.items()})


def make_client(cfg: Config, urls: list[str], api: str, model: str | None = None) -> LLMClient:
    """`model`: the name requests send (None: the run's)."""
    return LLMClient(urls, model=cfg.run.model if model is None else model, api=api,
                     api_key=cfg.run.api_key or os.environ.get("OPENAI_API_KEY"),
                     max_in_flight=cfg.run.max_inflight_requests,
                     retry=RetryPolicy(attempts=cfg.run.max_retries + 1),
                     timeouts=Timeouts(request=cfg.run.request_timeout_s))


def make_pool(cfg: Config) -> SandboxPool:
    limits = Limits(timeout_s=cfg.pool.timeout_s, memory_mb=cfg.pool.memory_mb,
                    cpu_base_s=cfg.pool.cpu_base_s, cpu_per_input_s=cfg.pool.cpu_per_input_s)
    return SandboxPool(PoolConfig(workers=cfg.pool.workers or None, limits=limits,
                                  coalesce_window_s=cfg.pool.coalesce_window_s))


class NoPool:
    """For phases that only ask the LLM (augment): no sandbox workers are forked."""

    n_workers = 1

    async def evaluate_many(self, jobs: Sequence[tuple[str, Sequence]], *, urgent: bool = False,
                            more_coming: bool = False) -> list[Sequence[Outcome]]:
        raise RuntimeError("this phase has no sandbox pool")  # such phases never execute code

    def stats(self) -> dict:
        return {}


async def check_reachable(client: Client, urls: list[str]) -> None:
    """Fail in one line when no server answers at all, instead of thousands of retried requests.

    Any HTTP answer counts (servers without /health answer 404); only a refused, reset or
    timed-out connection means unreachable.
    """
    async def answers(url: str) -> str | None:
        try:
            async with client.session.get(url.rstrip("/") + "/health",
                                          timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
            return None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return f"{url} ({type(exc).__name__}: {exc})".splitlines()[0]

    problems = [p for p in await asyncio.gather(*(answers(u) for u in urls)) if p]
    if len(problems) == len(urls):
        raise JobError("no LLM server answers: " + "; ".join(problems))
    for p in problems:
        log.warning("server unreachable, continuing with the others: %s", p)


async def served_model(client: Client, urls: list[str]) -> str | None:
    """The model name a server reports: OpenAI's /v1/models (SGLang, vLLM, llama-server),
    else SGLang's /get_model_info. None when no server says."""
    for url in urls:
        for path, pick in (("/v1/models", lambda j: j["data"][0]["id"]),
                           ("/get_model_info", lambda j: j["model_path"])):
            try:
                async with client.session.get(url.rstrip("/") + path,
                                              timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    if resp.status != 200:
                        continue
                    name = pick(await resp.json(content_type=None))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, LookupError,
                    TypeError):
                continue
            if isinstance(name, str) and name.strip():
                return name.strip()
    return None


@contextlib.asynccontextmanager
async def open_engine(cfg: Config, backend: str, run_dir: Path, store: RunStore,
                      pool_needed: bool = True) -> AsyncIterator[Engine]:
    """Servers (given or started here), the LLM clients (one per distinct servers and model of
    the roles), the sandbox pool and the stage context."""
    async with contextlib.AsyncExitStack() as stack:
        urls, api = await stack.enter_async_context(open_backend(cfg, backend, run_dir))
        main = (tuple(urls), cfg.run.model)
        endpoints = {role: (tuple(cfg.roles.servers_for(role) or urls), cfg.request_model(role))
                     for role in ROLES}
        clients: dict[tuple, Client] = {}
        served: dict[tuple, str] = {}
        for endpoint in [main, *endpoints.values()]:
            if endpoint in clients:
                continue
            servers, model = endpoint
            own_api = api if servers == main[0] else cfg.run.api
            client = clients[endpoint] = await stack.enter_async_context(
                make_client(cfg, list(servers), own_api, model))
            try:
                await check_reachable(client, list(servers))
            except JobError as exc:       # say whose servers they are
                if endpoint == main:
                    raise
                users = [role for role, e in endpoints.items() if e == endpoint]
                raise JobError(f"role {', '.join(users)}: {exc}") from None
            if unnamed(model):            # provenance names the model the server serves
                name = await served_model(client, list(servers))
                if name:
                    served[endpoint] = name
        if main in served:
            store.served_model = served[main]
        names = {role: served[e] for role, e in endpoints.items() if e in served}
        if names:
            store.served_models = names
        try:
            pool = await stack.enter_async_context(make_pool(cfg)) if pool_needed else NoPool()
        except RuntimeError as exc:       # workers that cannot start: one line, not a traceback
            raise JobError(f"sandbox pool: {exc}") from None
        role_clients = {role: clients[e] for role, e in endpoints.items() if e != main}
        yield Engine(cached_context(clients[main], role_clients, pool, store.state), clients[main], pool,
                     role_clients)
