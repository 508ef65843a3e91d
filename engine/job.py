"""One single-node AutoIF job: `autoif run`, in full or as online-DPO rounds.

The job checks its inputs, opens its store and engine, and hands the stages to
`engine.run.run_shard`, the run path every way of running shares; then it exports.

State lives in RUN_DIR/state.sqlite: every LLM answer is cached by request hash and every final
record is stored under a content id, so `kill -9` then the same command again re-sends no
answered request, duplicates nothing, and ends with the same exports.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

from engine.config import Config
from engine.demo import DEMO_SEEDS
from engine.errors import JobError, RefusedError
from engine.export import export, warm_up_parquet
from engine.metrics import RunMetrics
from engine.outcome import is_bind_failure
from engine.records import QueryResult
from engine.run import (Engine, RoundStored, RunSpec, RunStore, Stored, coverage, export_grpo_run,
                        export_options, export_run, open_engine, preflight, run_shard, run_start,
                        stopped_by_storage, storage_errors, write_summary)
from engine.stages import make_seed_batches

log = logging.getLogger("autoif.job")



async def run_job(cfg: Config, *, backend: str = "embedded", mode: str = "full", rounds: int = 1,
                  demo: bool = False, metrics_port: int | None = None,
                  metrics_host: str = "127.0.0.1", metrics_keep_s: float = 0.0,
                  progress: bool = True) -> dict:
    """The job; with `metrics_port`, Prometheus metrics are served on metrics_host:port while it
    runs and, `metrics_keep_s` > 0 (< 0: until interrupted), for that long after it."""
    started = run_start()
    run_dir = Path(cfg.run.output_dir)
    seeds, queries = preflight(cfg, run_dir)
    if demo:
        seeds = seeds[:DEMO_SEEDS]
    try:
        store = RunStore.open(cfg, run_dir)
    except sqlite3.Error as exc:
        raise RefusedError(f"--output-dir {run_dir}: cannot open state.sqlite ({exc})") from None
    metrics = RunMetrics()
    try:
        store.claim("single-node", f"--output-dir {run_dir}")
        if metrics_port:
            try:
                metrics.serve(metrics_port, metrics_host)
            except OSError as exc:
                if not is_bind_failure(exc):
                    raise
                raise RefusedError(f"--metrics-port {metrics_port}: cannot listen on "
                                   f"{metrics_host}:{metrics_port} ({os.strerror(exc.errno)})") from None
            log.info("metrics at http://%s:%d/metrics", metrics_host, metrics_port)
        spec = RunSpec(cfg, run_dir, seeds=seeds, queries=queries, progress=progress, started=started)
        with storage_errors(run_dir):
            async with open_engine(cfg, backend, run_dir, store) as engine:
                if mode == "online-dpo":
                    summary = await run_online_dpo(spec, engine, store, rounds, metrics)
                else:
                    summary = await run_full(spec, engine, store, metrics)
        await metrics.linger(metrics_keep_s)
        return summary
    finally:
        metrics.close()
        store.close()


async def run_full(spec: RunSpec, engine: Engine, store: RunStore,
                   metrics: RunMetrics | None = None) -> dict:
    """The whole chain over the seeds, then the exports and summary.json."""
    cfg, run_dir = spec.config, spec.run_dir
    source = make_seed_batches(list(spec.seeds), cfg.augment.batches, cfg.augment.seeds_shown, cfg.run.seed)
    if cfg.export.parquet:   # while the server generates, not after its last answer
        threading.Thread(target=warm_up_parquet, name="autoif-warm-parquet", daemon=True).start()

    # A fresh run exports the results it made, in the order it made them, without reading them
    # back; a run resumed over stored results reads the store, which holds them all.
    fresh: list[QueryResult] | None = [] if store.count_results() == 0 else None
    seen: set[str] = set()

    def keep(result: QueryResult) -> None:
        if fresh is not None and result.id not in seen:
            seen.add(result.id)
            fresh.append(result)

    summary = await run_shard(spec, engine, source, recorder=Stored(store), sink=keep, metrics=metrics)
    stopped_by_storage(summary, run_dir)
    summary.update(spec.started, model=store.model_name(cfg), models=store.model_names(cfg),
                   config_hash=cfg.config_hash(),
                   config=cfg.public_dict())
    funnel = engine.ctx.funnel
    with storage_errors(run_dir):
        files = export_run(cfg, store, run_dir / "exports", fresh, funnel)
        grpo = export_grpo_run(cfg, store, run_dir / "exports", funnel)
        summary["funnel"] = funnel.to_dict()     # with the GRPO rows
        summary["grpo"] = grpo.to_dict()
        summary["exports"] = {k: str(v) for k, v in {**files, **grpo.files}.items()}
        summary["truncation"] = funnel.truncation()   # token limits should make this rare
        if cfg.compose.enabled:
            summary["compose"] = coverage(store)
        store.save_funnel(summary["funnel"])
        write_summary(run_dir, "summary.json", summary, funnel)
    return summary


ONLINE_STAGES = ("queries", "responses", "scoring")


async def run_online_dpo(spec: RunSpec, engine: Engine, store: RunStore, rounds: int,
                         metrics: RunMetrics | None = None) -> dict:
    """Queries, responses and scoring again per round, the policy model as the server; one
    pair file per round."""
    cfg, run_dir = spec.config, spec.run_dir
    instructions = list(store.verified())
    if not instructions:
        raise JobError(f"{run_dir}: no verified instructions yet; run `autoif run` (mode full) "
                       "with this --output-dir first")
    round_spec = replace(spec, stages=ONLINE_STAGES)
    last: dict = {}
    for r in range(1, max(1, rounds) + 1):
        # each round samples afresh (its own cache namespace), and is itself resumable
        round_engine = replace(engine, ctx=engine.context(store.state, namespace=f"online-dpo-round-{r}"))
        results: list[QueryResult] = []
        last = await run_shard(round_spec, round_engine, instructions, recorder=RoundStored(store, r),
                               sink=results.append, metrics=metrics)
        last.update(spec.started)
        stopped_by_storage(last, run_dir)
        out_dir = run_dir / "online_dpo" / f"round_{r:03d}"
        # pairs from this round's policy samples only: instruction-level pairs (from test
        # cases) do not change between rounds and are in the full run's exports already
        with storage_errors(run_dir):
            files = export(out_dir, [], sorted(results, key=lambda r: r.id),
                           replace(export_options(cfg, store), formats=()))
            last["exports"] = {k: str(v) for k, v in files.items()}
            write_summary(run_dir, f"summary_online_round_{r:03d}.json", last, round_engine.ctx.funnel)
        if last.get("stopped") != "completed":   # interrupted: no further rounds
            break
    return last


__all__ = ["JobError", "run_full", "run_job", "run_online_dpo"]
