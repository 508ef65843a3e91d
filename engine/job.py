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
import os
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import sqlite3

import aiohttp
import orjson

from engine.cache import CachedLLM
from engine.client import LLMClient, RetryPolicy
from engine.config import Config
from engine.errors import JobError, RefusedError
from engine.export import ExportOptions, export, pyarrow_available, warm_up_parquet
from engine.grpo import GrpoOptions, GrpoSummary, export_grpo
from engine.metrics import LiveCollector, RunMetrics, TimeSeries
from engine.outcome import is_bind_failure, is_storage_failure
from engine.prompting import packaged_file
from engine.progress import Progress, print_funnel
from engine.records import QueryResult, SampledPrompt, VerifiedInstruction
from engine.report.observe import Distributions, observe_stages
from engine.runner import StageSpec, StreamRunner
from engine.sim.config import SimConfig
from engine.sim.responders import AUTOIF_FIXTURE
from engine.sim.server import SimServer
from engine.stage import Context, Funnel, Stage
from engine.stages import (CHAIN, SAMPLED, AuditStage, BackTranslateStage, QueryBudget, default_stages,
                           load_queries, load_seed_instructions, make_seed_batches)
from engine.state import StateStore
from sandbox_pool import SandboxPool

log = logging.getLogger("autoif.job")

# `--demo`: a handful of seeds and queries, every stage for real, minutes on a laptop CPU. Sized
# for the embedded 0.5B model on 2 cores, which generates ~30-45 tok/s over 8 slots: the first
# seeds of the built-in set are constraints it can both write checkers for and follow
# (measured: a reply's opening words, no digits, a short answer), an odd K (with 4 functions
# split 2-2, no case has agreement above 0.5), augmentation continues the seed list by two
# in two samples and keeps the first two that pass (list style: in chat the model obeys the
# shown constraints instead; one sample kept none in 1 of 4 runs), and 10 queries per
# instruction, 2 samples each at temperature 1.0, some of which invite numbers (a count, a
# year, a temperature). A query-level DPO pair needs a reply that breaks the constraint; the
# model's verdicts hardly vary between samples of one query (over four runs with 3 samples,
# 1-5 queries a run had both a passing and a failing one), so the reject is the plain reply
# to the query (plain_rejects), which the verifier stage asks for anyway for 4 of the queries:
# 10-28 pairs a run. Cross-validation kept 3-6 of the 5-7 instructions, and each query costs
# ~4 s of the run (32 queries: 257 s, 48: 323 s), so the run's queries are capped at 30 in all
# (max_queries): 10 each for the first 3 verified, which leaves 20+ SFT rows when only 3
# survive, and a bounded time when all do. Each instruction costs ~1k generated tokens of
# verifiers and cases: a run with 9 augmented instructions took 537 s. The demo's queries
# (prompts/demo_queries.jsonl) ask for short answers: on 2 cores a long reply costs seconds
# per sample, and a quarter of them hit the token limit.
DEMO = dict(augment_batches=1, augment_seeds_shown=4, augment_per_prompt=2, augment_samples=2, augment_max_new=2,
            augment_style="list", verifier_k=5,
            verifier_case_samples=4, verifier_cases_per_side=3, queries_per_instruction=10, max_queries=30, response_temperature=1.0,
            responses_k=2, plain_rejects=True, max_inflight_requests=8, stage_concurrency=8, verifier_max_tokens=200,
            verifier_case_max_tokens=200, response_max_tokens=256, judge_max_tokens=128,
            augment_max_tokens=200, score_until=1, queries_path=str(packaged_file("demo_queries.jsonl")),
            output_dir="runs/demo")
DEMO_SEEDS = 5


# -- before any work ---------------------------------------------------------------------

def load_inputs(cfg: Config) -> tuple[list, list]:
    """Seed instructions and queries, read in full before anything starts.

    Bad lines are skipped with a warning while they are at most `max_bad_input_share` of a
    file; more than that (or no usable line at all) refuses the run in one line.
    """
    def read(what: str, path: str, loader):
        bad: list[str] = []
        try:
            items = loader(path or None, on_error=bad.append)
        except OSError as exc:
            raise RefusedError(f"{what} {path}: {exc.strerror or exc}") from None
        total = len(items) + len(bad)        # distinct usable lines plus bad ones (a lower bound)
        if bad and (not items or len(bad) > cfg.max_bad_input_share * total):
            raise RefusedError(f"{what} {path}: {len(bad)} of {total} lines are bad (more than "
                               f"--max-bad-input-share {cfg.max_bad_input_share:g}); first: {bad[0]}")
        if not items:
            raise RefusedError(f"{what} {path or '(built-in)'}: no usable lines")
        if bad:
            log.warning("%s %s: skipped %d bad line(s), e.g. %s", what, path, len(bad), bad[0])
        return items

    return (read("seed instructions", cfg.seeds_path, load_seed_instructions),
            read("queries", cfg.queries_path, load_queries))


def preflight(cfg: Config, run_dir: Path) -> tuple[list, list]:
    """Everything that can be refused before any work: inputs, Parquet, the output directory.
    Returns (seeds, queries)."""
    seeds, queries = load_inputs(cfg)
    if cfg.parquet and not pyarrow_available():
        raise RefusedError("Parquet exports need pyarrow (pip install pyarrow); "
                           "or write JSONL only with --no-parquet")
    check_output_dir(run_dir)
    return seeds, queries


def check_output_dir(run_dir: Path) -> None:
    """The run directory exists (or is created) and takes a file; else one line, before any work."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RefusedError(f"--output-dir {run_dir} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RefusedError(f"--output-dir {run_dir}: cannot create it ({exc.strerror or exc})") from None
    for d in (run_dir, run_dir / "exports"):
        if d.is_dir():
            try:
                fd, probe = tempfile.mkstemp(dir=d, prefix=".autoif-write-check-")
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise RefusedError(f"--output-dir {d} cannot be written ({exc.strerror or exc})") from None


# -- pieces ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def open_servers(cfg: Config, backend: str, run_dir: Path) -> AsyncIterator[tuple[list[str], str]]:
    """Yields (server URLs, api) for the job, starting a server when none is configured."""
    if cfg.servers:
        yield list(cfg.servers), cfg.api
        return
    if backend == "sim":
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
    return LLMClient(urls, model=cfg.model, api=api, api_key=cfg.api_key or os.environ.get("OPENAI_API_KEY"),
                     max_in_flight=cfg.max_inflight_requests,
                     retry=RetryPolicy(attempts=cfg.max_retries + 1),
                     request_timeout=cfg.request_timeout_s)


def make_pool(cfg: Config) -> Any:
    return SandboxPool(workers=cfg.pool_workers or None, timeout_s=cfg.pool_timeout_s,
                       memory_mb=cfg.pool_memory_mb, cpu_base_s=cfg.pool_cpu_base_s,
                       cpu_per_input_s=cfg.pool_cpu_per_input_s,
                       coalesce_window_s=cfg.pool_coalesce_window_s)


class NoPool:
    """For phases that only ask the LLM (augment): no sandbox workers are forked."""

    n_workers = 1

    async def evaluate_many(self, jobs, *, urgent=False, more_coming=False):  # pragma: no cover - such phases never execute code
        raise RuntimeError("this phase has no sandbox pool")

    def stats(self) -> dict:
        return {}


async def check_reachable(client: Any, urls: list[str]) -> None:
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


async def served_model(client: Any, urls: list[str]) -> str | None:
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


def model_name(cfg: Config, store: StateStore) -> str:
    """The model of the run's provenance: as given, else as the server named it."""
    if cfg.model not in ("", "default"):
        return cfg.model
    return store.get_meta("served_model") or cfg.model


@contextlib.asynccontextmanager
async def open_engine(cfg: Config, backend: str, run_dir: Path, store: StateStore,
                      pool_needed: bool = True) -> AsyncIterator[tuple[Any, Any, Context]]:
    """Servers (given or started here), the LLM client, the sandbox pool and the stage context:
    the one place a run (single-node or one Ray shard) builds them."""
    async with contextlib.AsyncExitStack() as stack:
        urls, api = await stack.enter_async_context(open_servers(cfg, backend, run_dir))
        client = await stack.enter_async_context(make_client(cfg, urls, api))
        await check_reachable(client, urls)
        if cfg.model in ("", "default"):      # provenance names the model the server serves
            name = await served_model(client, urls)
            if name:
                store.set_meta("served_model", name)
        try:
            pool = await stack.enter_async_context(make_pool(cfg)) if pool_needed else NoPool()
        except RuntimeError as exc:       # workers that cannot start: one line, not a traceback
            raise JobError(f"sandbox pool: {exc}") from None
        yield client, pool, Context(llm=CachedLLM(client, store), executor=pool)


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


def stored_query_budget(cfg: Config, store: StateStore) -> QueryBudget:
    """config.max_queries with the grants this run directory already made, kept in its store
    as they are made: a rerun gives each instruction the same queries, and no more in all."""
    stored = store.get_meta("query_grants")
    return QueryBudget(cfg.max_queries, orjson.loads(stored) if stored else None,
                       on_grant=lambda grants: store.set_meta("query_grants", orjson.dumps(grants).decode()))


def probe_counters(client: Any, pool: Any) -> dict:
    c = client.stats() if hasattr(client, "stats") else {}
    p = pool.stats() if hasattr(pool, "stats") else {}
    return {"requests": c.get("requests", 0),
            "completion_tokens": c.get("completion_tokens", 0),
            "checks": p.get("checks", 0), "pool_busy_s": p.get("busy_s", 0.0)}


async def run_stages(cfg: Config, stages: list[Stage], source: list, ctx: Context, *, client: Any,
                     pool: Any, run_dir: Path, progress: bool, sink: Any = None,
                     series: TimeSeries | None = None, metrics: RunMetrics | None = None) -> dict:
    """The stages over the source; `metrics`: the job's (served or not), else this run's own."""
    metrics = metrics or RunMetrics()
    dists = Distributions()                 # pass rates and scores of every response, for reports
    stages = observe_stages(list(stages), dists)
    specs = [StageSpec(s, cfg.stage_concurrency) for s in stages]
    runner = StreamRunner(specs, ctx, queue_size=max(8, cfg.stage_concurrency), sink=sink,
                          metrics=metrics)
    runner.install_signal_handlers()
    series = series if series is not None else TimeSeries(interval_s=1.0)
    stats = client.stats if hasattr(client, "stats") else dict
    metrics.attach(LiveCollector(stats=lambda: {**stats(), **probe_counters(client, pool)},
                                 point=lambda: series.points[-1] if series.points else {},
                                 queues=runner.queue_depths, funnel=ctx.funnel.to_dict,
                                 distributions=dists.to_dict))
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
    out = summary.to_dict()
    out["client"] = client.stats() if hasattr(client, "stats") else {}
    out["pool"] = pool.stats() if hasattr(pool, "stats") else {}
    out["timeseries"] = series.to_list()
    out["distributions"] = dists.to_dict()
    if runner.failure is not None:
        out["failure"] = str(runner.failure)
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
    print(file=sys.stderr)
    print_funnel(funnel.to_dict(), sys.stderr)
    print(f"wall {summary['wall_s']:.1f}s; summary: {path}", file=sys.stderr)
    # the closing lines (what was lost, what to do) come last: outcome.finish(), after shutdown


# -- the job ------------------------------------------------------------------------------

async def run_job(cfg: Config, *, backend: str = "embedded", mode: str = "full", rounds: int = 1,
                  demo: bool = False, metrics_port: int | None = None,
                  metrics_host: str = "127.0.0.1", metrics_keep_s: float = 0.0,
                  progress: bool = True) -> dict:
    """The job; with `metrics_port`, Prometheus metrics are served on metrics_host:port while it
    runs and, `metrics_keep_s` > 0 (< 0: until interrupted), for that long after it."""
    run_dir = Path(cfg.output_dir)
    seeds, queries = preflight(cfg, run_dir)
    if demo:
        seeds = seeds[:DEMO_SEEDS]
    try:
        store = open_store(cfg, run_dir)
    except sqlite3.Error as exc:
        raise RefusedError(f"--output-dir {run_dir}: cannot open state.sqlite ({exc})") from None
    metrics = RunMetrics()
    try:
        if metrics_port:
            try:
                metrics.serve(metrics_port, metrics_host)
            except OSError as exc:
                if not is_bind_failure(exc):
                    raise
                raise RefusedError(f"--metrics-port {metrics_port}: cannot listen on "
                                   f"{metrics_host}:{metrics_port} ({os.strerror(exc.errno)})") from None
            log.info("metrics at http://%s:%d/metrics", metrics_host, metrics_port)
        with storage_errors(run_dir):
            summary = await _run_mode(cfg, backend, mode, rounds, seeds, queries, store, run_dir,
                                      metrics, progress)
        await metrics.linger(metrics_keep_s)
        return summary
    finally:
        metrics.close()
        store.close()


async def _run_mode(cfg: Config, backend: str, mode: str, rounds: int, seeds: list, queries: list,
                    store: StateStore, run_dir: Path, metrics: RunMetrics, progress: bool) -> dict:
    async with open_engine(cfg, backend, run_dir, store) as (client, pool, ctx):
        if mode == "online-dpo":
            return await run_online_dpo(cfg, ctx, client, pool, store, run_dir, rounds,
                                        metrics, progress, queries)
        return await run_full(cfg, seeds, ctx, client, pool, store, run_dir, metrics,
                              progress, queries)


def stages_of(cfg: Config, seeds: list, queries: list | None,
              names: tuple[str, ...] = CHAIN, on_sampled: Any = None,
              query_budget: QueryBudget | None = None) -> list:
    """The job's stages; an input file they read that is missing or bad ends the job in one line."""
    try:
        return default_stages(cfg, seeds, queries, names=names, on_sampled=on_sampled,
                              query_budget=query_budget)
    except (OSError, ValueError) as exc:
        raise JobError(f"stages: {exc}") from None


async def run_full(cfg: Config, seeds: list, ctx: Context, client: Any, pool: Any, store: StateStore,
                run_dir: Path, metrics: RunMetrics | None, progress: bool,
                queries: list | None = None) -> dict:
    # the verified instructions are stored as the audit leaves them, under back-translation's
    # label; every graded prompt (kept or not) is stored for the GRPO prompt set
    stages = [Recorded(s, store, BackTranslateStage.name) if isinstance(s, AuditStage) else s
              for s in stages_of(cfg, seeds, queries,
                                 on_sampled=lambda s: store.put_records([s], SAMPLED),
                                 query_budget=stored_query_budget(cfg, store))]
    source = make_seed_batches(seeds, cfg.augment_batches, cfg.augment_seeds_shown, cfg.seed)
    if cfg.parquet:   # while the server generates, not after its last answer
        threading.Thread(target=warm_up_parquet, name="autoif-warm-parquet", daemon=True).start()

    # A fresh run exports the results it sank, as stored and in the same order (put_records
    # stamps them in order), instead of reading 800 of them back at 0.1 s per --quick bench run;
    # a run resumed over stored results reads the store, which holds them all.
    fresh: list[QueryResult] | None = [] if store.count_records(QueryResult, "final") == 0 else None

    def sink(result: QueryResult) -> None:
        if store.put_records([result], "final") and fresh is not None:   # 0: stored already
            fresh.append(result)

    summary = await run_stages(cfg, stages, source, ctx, client=client, pool=pool, run_dir=run_dir,
                               metrics=metrics, progress=progress, sink=sink)
    stopped_by_storage(summary, run_dir)
    summary.update(model=model_name(cfg, store), config_hash=cfg.config_hash(), config=cfg.public_dict())
    with storage_errors(run_dir):
        files = export_run(cfg, store, run_dir / "exports", fresh)
        grpo = export_grpo_run(cfg, store, run_dir / "exports", ctx.funnel)
        summary["funnel"] = ctx.funnel.to_dict()     # with the GRPO rows
        summary["grpo"] = grpo.to_dict()
        summary["exports"] = {k: str(v) for k, v in {**files, **grpo.files}.items()}
        summary["truncation"] = ctx.funnel.truncation()   # token limits should make this rare
        store.save_funnel(summary["funnel"])
        write_summary(run_dir, "summary.json", summary, ctx.funnel)
    return summary


def stopped_by_storage(summary: dict, run_dir: Path) -> None:
    if summary.get("stopped") == "failed":
        raise JobError(f"stopped: cannot write to {run_dir} ({summary.get('failure')}); every "
                       "record stored before is kept: free space and run the same command again")


@contextlib.contextmanager
def storage_errors(run_dir: Path):
    """Disk full (or read-only) while writing exports or the summary: one line, not a traceback.
    Exports are written to a temporary name and renamed, so older files stay whole."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        if not is_storage_failure(exc) and not isinstance(exc, PermissionError):
            raise
        raise JobError(f"cannot write to {run_dir} ({exc}); every record stored before is kept: "
                       "free space and run the same command again") from None


def export_run(cfg: Config, store: StateStore, out_dir: Path, results: list | None = None) -> dict:
    instructions = list(store.iter_records(VerifiedInstruction, BackTranslateStage.name))
    if results is None:
        results = list(store.iter_records(QueryResult, "final"))
    return export(out_dir, instructions, results, export_options(cfg, store))


def export_options(cfg: Config, store: StateStore) -> ExportOptions:
    return replace(ExportOptions.from_config(cfg), model=model_name(cfg, store))


def export_grpo_run(cfg: Config, store: StateStore, out_dir: Path, funnel: Funnel) -> GrpoSummary:
    """The GRPO prompt files from every graded prompt; the share of mixed prompts goes in the funnel."""
    opts = replace(GrpoOptions.from_config(cfg), model=model_name(cfg, store))
    grpo = export_grpo(out_dir, store.iter_records(SampledPrompt, SAMPLED), opts)
    grpo.count(funnel)
    return grpo


async def run_online_dpo(cfg: Config, ctx: Context, client: Any, pool: Any, store: StateStore,
                      run_dir: Path, rounds: int, metrics: RunMetrics | None, progress: bool,
                      queries: list | None = None) -> dict:
    """Stages 5-7 again per round, the policy model as the server; one pair file per round."""
    instructions = list(store.iter_records(VerifiedInstruction, BackTranslateStage.name))
    if not instructions:
        raise JobError(f"{run_dir}: no verified instructions yet; run `autoif run` (mode full) "
                       "with this --output-dir first")
    stages = stages_of(cfg, [], queries, ("queries", "responses", "scoring"))
    last: dict = {}
    for r in range(1, max(1, rounds) + 1):
        # each round samples afresh (its own cache namespace), and is itself resumable
        llm = CachedLLM(client, store, namespace=f"online-dpo-round-{r}")
        ctx_r = Context(llm=llm, executor=pool, funnel=Funnel())
        results: list[QueryResult] = []
        last = await run_stages(cfg, stages, instructions, ctx_r, client=client, pool=pool,
                                run_dir=run_dir, metrics=metrics,
                                progress=progress, sink=results.append)
        stopped_by_storage(last, run_dir)
        store.put_records(results, f"online_round_{r}")
        out_dir = run_dir / "online_dpo" / f"round_{r:03d}"
        # pairs from this round's policy samples only: instruction-level pairs (from test
        # cases) do not change between rounds and are in the full run's exports already
        with storage_errors(run_dir):
            files = export(out_dir, [], results, replace(export_options(cfg, store), formats=()))
            last["exports"] = {k: str(v) for k, v in files.items()}
            write_summary(run_dir, f"summary_online_round_{r:03d}.json", last, ctx_r.funnel)
        if last.get("stopped") != "completed":   # interrupted: no further rounds
            break
    return last
