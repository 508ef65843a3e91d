"""One AutoIF job: servers, client, pool and stages assembled and run, resumable from its run directory.

The one place a job is built. The CLI (`autoif run`), the Ray driver and shard workers, and the
benchmarks all call into this module; it imports nothing from `engine.commands` or
`engine.distributed`, so no import runs back up.

State lives in RUN_DIR/state.sqlite: every LLM answer is cached by request hash and every final
record is stored under a content id, so `kill -9` then the same command again re-sends no
answered request, duplicates nothing, and ends with the same exports.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import orjson

from engine.cache import CachedLLM
from engine.client import LLMClient, RetryPolicy
from engine.config import Config
from engine.export import ExportOptions, export
from engine.grpo import GrpoOptions, GrpoSummary, export_grpo
from engine.metrics import LiveCollector, RunMetrics, TimeSeries
from engine.progress import Progress
from engine.records import QueryResult, SampledPrompt, VerifiedInstruction
from engine.report.observe import Distributions, observe_stages
from engine.runner import StageSpec, StreamRunner
from engine.stage import Context, Funnel, Stage
from engine.stages import (SAMPLED, AuditStage, BackTranslateStage, QueryJoinStage,
                           ResponseStage, ScoreStage, default_stages, load_seed_instructions,
                           make_seed_batches)
from engine.state import StateStore
from sandbox_pool import SandboxPool

log = logging.getLogger("autoif.job")

# `--demo`: a handful of seeds and queries, every stage for real, minutes on a laptop CPU.
DEMO = dict(augment_batches=2, augment_seeds_shown=4, augment_per_prompt=3, verifier_k=3,
            queries_per_instruction=2, responses_k=3, max_inflight_requests=8,
            stage_concurrency=8, verifier_max_tokens=512, response_max_tokens=256,
            judge_max_tokens=64, augment_max_tokens=256, output_dir="runs/demo")
DEMO_SEEDS = 4


class JobError(RuntimeError):
    """A one-line reason the job could not run (bad input, no server, mismatched run dir)."""


# -- pieces ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def open_servers(cfg: Config, backend: str, run_dir: Path) -> AsyncIterator[tuple[list[str], str]]:
    """Yields (server URLs, api) for the job, starting a server when none is configured."""
    if cfg.servers:
        yield list(cfg.servers), cfg.api
        return
    if backend == "sim":
        from engine.sim.config import SimConfig
        from engine.sim.server import SimServer
        from engine.sim.responders import AUTOIF_FIXTURE
        async with SimServer(SimConfig(responder=str(AUTOIF_FIXTURE))) as sim:
            log.info("started the SGLang simulator (a test double) at %s", sim.url)
            yield [sim.url], "sglang"
        return
    try:
        from engine.servers import default_embedded_server
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


def open_store(cfg: Config, run_dir: Path) -> StateStore:
    """The run's state; refuses a run directory made with other data-affecting settings."""
    run_dir.mkdir(parents=True, exist_ok=True)
    store = StateStore(run_dir / "state.sqlite")
    h = cfg.config_hash()
    old = store.get_meta("config_hash")
    if old is not None and old != h:
        store.close()
        raise JobError(f"{run_dir} holds a run with another configuration (hash {old}, now {h}); "
                       "use another --output-dir to start a new run")
    store.set_meta("config_hash", h)
    return store


def make_client(cfg: Config, urls: list[str], api: str) -> Any:
    return LLMClient(urls, model=cfg.model, api=api, max_in_flight=cfg.max_inflight_requests,
                     retry=RetryPolicy(attempts=cfg.max_retries + 1),
                     request_timeout=cfg.request_timeout_s)


def make_pool(cfg: Config) -> Any:
    return SandboxPool(workers=cfg.pool_workers or None, timeout_s=cfg.pool_timeout_s,
                       memory_mb=cfg.pool_memory_mb)


class NoPool:
    """For phases that only ask the LLM (augment): no sandbox workers are forked."""

    n_workers = 1

    async def evaluate_many(self, jobs):  # pragma: no cover - such phases never execute code
        raise RuntimeError("this phase has no sandbox pool")

    def stats(self) -> dict:
        return {}


async def check_reachable(client: Any, urls: list[str]) -> None:
    """Fail in one line when no server answers at all, instead of thousands of retried requests.

    Any HTTP answer counts (servers without /health answer 404); only a refused, reset or
    timed-out connection means unreachable.
    """
    import aiohttp

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


@contextlib.asynccontextmanager
async def open_engine(cfg: Config, backend: str, run_dir: Path, store: StateStore,
                      pool_needed: bool = True) -> AsyncIterator[tuple[Any, Any, Context]]:
    """Servers (given or started here), the LLM client, the sandbox pool and the stage context:
    the one place a run (single-node or one Ray shard) builds them."""
    async with contextlib.AsyncExitStack() as stack:
        urls, api = await stack.enter_async_context(open_servers(cfg, backend, run_dir))
        client = await stack.enter_async_context(make_client(cfg, urls, api))
        await check_reachable(client, urls)
        pool = await stack.enter_async_context(make_pool(cfg)) if pool_needed else NoPool()
        yield client, pool, Context(llm=CachedLLM(client, store), executor=pool, config=cfg,
                                    store=store)


class Recorded:
    """Wraps a stage and stores each of its outputs (resumable, duplicate-free via content ids)."""

    def __init__(self, stage: Stage, store: StateStore, label: str | None = None) -> None:
        self.inner, self.store, self.label = stage, store, label or stage.name
        self.name = stage.name

    async def process(self, item: Any, ctx: Context) -> list:
        outs = await self.inner.process(item, ctx)
        if outs:
            self.store.put_records(list(outs), self.label)
        return outs


def probe_counters(client: Any, pool: Any) -> dict:
    c = client.stats() if hasattr(client, "stats") else {}
    p = pool.stats() if hasattr(pool, "stats") else {}
    return {"requests": c.get("requests", 0),
            "completion_tokens": c.get("completion_tokens", 0),
            "checks": p.get("checks", 0), "pool_busy_s": p.get("busy_s", 0.0)}


async def run_stages(stages: list[Stage], source: list, ctx: Context, *, client: Any, pool: Any,
                     run_dir: Path, metrics_port: int | None, progress: bool,
                     sink: Any = None, series: TimeSeries | None = None) -> dict:
    cfg = ctx.config
    metrics = RunMetrics()
    dists = Distributions()                 # pass rates and scores of every response, for reports
    stages = observe_stages(list(stages), dists)
    specs = [StageSpec(s, cfg.stage_concurrency) for s in stages]
    runner = StreamRunner(specs, ctx, queue_size=max(8, cfg.stage_concurrency), sink=sink,
                          metrics=metrics)
    runner.install_signal_handlers()
    series = series if series is not None else TimeSeries(interval_s=1.0)
    LiveCollector(stats=lambda: {"in_flight": client.stats().get("in_flight", 0),
                                 **probe_counters(client, pool)},
                  point=lambda: series.points[-1] if series.points else {},
                  queues=runner.queue_depths, funnel=ctx.funnel.to_dict,
                  distributions=dists.to_dict).register(metrics)
    if metrics_port:
        metrics.serve(metrics_port)
        log.info("metrics at http://127.0.0.1:%d/metrics", metrics_port)
    # the time series is sampled whether or not the progress line is shown
    reporter = Progress(runner, lambda: probe_counters(client, pool), series=series,
                        pool_workers=getattr(pool, "n_workers", 1) or 1,
                        stream=None if progress else _Discard())
    ticker = asyncio.create_task(reporter.run())
    try:
        summary = await runner.run(source)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        metrics.close()
    out = summary.to_dict()
    out["client"] = client.stats() if hasattr(client, "stats") else {}
    out["pool"] = pool.stats() if hasattr(pool, "stats") else {}
    out["timeseries"] = series.to_list()
    out["distributions"] = dists.to_dict()
    return out


class _Discard:
    """A stream that drops what is written (the progress line when it is not shown)."""

    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def write_summary(run_dir: Path, name: str, summary: dict, funnel: Funnel) -> None:
    path = run_dir / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                                 default=str))
    tmp.replace(path)
    print("\n" + funnel.format(), file=sys.stderr)
    print(f"wall {summary['wall_s']:.1f}s; summary: {path}", file=sys.stderr)


# -- the job ------------------------------------------------------------------------------

async def run_job(cfg: Config, *, backend: str = "embedded", mode: str = "full", rounds: int = 1,
                  demo: bool = False, metrics_port: int | None = None,
                  progress: bool = True) -> dict:
    run_dir = Path(cfg.output_dir)
    store = open_store(cfg, run_dir)
    try:
        try:
            seeds = load_seed_instructions(cfg.seeds_path or None)
        except (OSError, ValueError) as exc:
            raise JobError(f"seed instructions: {exc}") from None
        if demo:
            seeds = seeds[:DEMO_SEEDS]
        async with open_engine(cfg, backend, run_dir, store) as (client, pool, ctx):
            if mode == "online-dpo":
                return await run_online_dpo(cfg, ctx, client, pool, store, run_dir, rounds,
                                         metrics_port, progress)
            return await run_full(cfg, seeds, ctx, client, pool, store, run_dir, metrics_port, progress)
    finally:
        store.close()


async def run_full(cfg: Config, seeds: list, ctx: Context, client: Any, pool: Any, store: StateStore,
                run_dir: Path, metrics_port: int | None, progress: bool) -> dict:
    # the verified instructions are stored as the audit leaves them, under back-translation's label
    stages = [Recorded(s, store, BackTranslateStage.name) if isinstance(s, AuditStage) else s
              for s in default_stages(cfg, seeds)]        # seeds: as loaded (demo-trimmed)
    source = make_seed_batches(seeds, cfg.augment_batches, cfg.augment_seeds_shown, cfg.seed)

    def sink(result: QueryResult) -> None:
        store.put_records([result], "final")

    summary = await run_stages(stages, source, ctx, client=client, pool=pool, run_dir=run_dir,
                               metrics_port=metrics_port, progress=progress, sink=sink)
    files = export_run(cfg, store, run_dir / "exports")
    grpo = export_grpo_run(cfg, store, run_dir / "exports", ctx.funnel)
    summary["funnel"] = ctx.funnel.to_dict()
    summary["grpo"] = grpo.to_dict()
    summary["exports"] = {k: str(v) for k, v in {**files, **grpo.files}.items()}
    store.save_funnel(summary["funnel"])
    write_summary(run_dir, "summary.json", summary, ctx.funnel)
    return summary


def export_run(cfg: Config, store: StateStore, out_dir: Path, results: list | None = None) -> dict:
    instructions = list(store.iter_records(VerifiedInstruction, BackTranslateStage.name))
    if results is None:
        results = list(store.iter_records(QueryResult, "final"))
    return export(out_dir, instructions, results, ExportOptions.from_config(cfg))


def export_grpo_run(cfg: Config, store: StateStore, out_dir: Path, funnel: Funnel) -> GrpoSummary:
    """The GRPO prompt files from every graded prompt; the share of mixed prompts goes in the funnel."""
    grpo = export_grpo(out_dir, store.iter_records(SampledPrompt, SAMPLED), GrpoOptions.from_config(cfg))
    grpo.count(funnel)
    return grpo


async def run_online_dpo(cfg: Config, ctx: Context, client: Any, pool: Any, store: StateStore,
                      run_dir: Path, rounds: int, metrics_port: int | None, progress: bool) -> dict:
    """Stages 5-7 again per round, the policy model as the server; one pair file per round."""
    instructions = list(store.iter_records(VerifiedInstruction, BackTranslateStage.name))
    if not instructions:
        raise JobError(f"{run_dir}: no verified instructions yet; run `autoif run` (mode full) "
                       "with this --output-dir first")
    last: dict = {}
    for r in range(1, max(1, rounds) + 1):
        # each round samples afresh (its own cache namespace), and is itself resumable
        llm = CachedLLM(client, store, namespace=f"online-dpo-round-{r}")
        ctx_r = Context(llm=llm, executor=pool, funnel=Funnel(), config=cfg, store=store)
        results: list[QueryResult] = []
        stages = [QueryJoinStage(), ResponseStage(), ScoreStage()]
        last = await run_stages(stages, instructions, ctx_r, client=client, pool=pool,
                                run_dir=run_dir, metrics_port=metrics_port if r == 1 else None,
                                progress=progress, sink=results.append)
        store.put_records(results, f"online_round_{r}")
        out_dir = run_dir / "online_dpo" / f"round_{r:03d}"
        # pairs from this round's policy samples only: instruction-level pairs (from test
        # cases) do not change between rounds and are in the full run's exports already
        files = export(out_dir, [], results, replace(ExportOptions.from_config(cfg), formats=()))
        last["exports"] = {k: str(v) for k, v in files.items()}
        write_summary(run_dir, f"summary_online_round_{r:03d}.json", last, ctx_r.funnel)
        if last.get("stopped") != "completed":   # interrupted: no further rounds
            break
    return last
