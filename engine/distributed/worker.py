"""One shard's engine: the same stages, client, sandbox pool and state store as `autoif run`,
driven by a Ray actor (ShardWorker, below) or called directly (tests of the phases without Ray).

Two phases, each an async generator of events the driver consumes as they come:

- augment_events(): stage 1 (augment) once for the whole run; its output, the instructions, is
  what gets sharded. Its state is RUN_DIR/shards/augment/state.sqlite.
- shard_events(): stages 2..7 over one shard's instructions; state in the shard's own
  RUN_DIR/shards/NNNN-of-MMMM/state.sqlite.

Events are the typed ones of engine.run.events (Tick, Verified, Results, Sampled, Done),
their records as dicts of plain JSON types. Each phase runs through `engine.run.run_shard`,
as `autoif run` does.

Resume: every LLM answer is in the phase's SQLite cache before it is used, so a rerun after a
kill re-sends no answered request; records carry content ids, so re-emitted ones are the same
records (the driver stores them with INSERT OR IGNORE). A finished phase is marked in its store
and on a rerun just replays its stored records and summary, without starting any server.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import AsyncIterator

import orjson

from engine.config import Config
from engine.metrics import TimeSeries
from engine.records import Instruction, Query
from engine.run import (Done, EventQueue, RunSpec, RunStore, Sampled, ShardEvent, Streamed, Tick, Verified,
                        input_hash, open_engine, run_shard)
from engine.run.events import Results, in_parts
from engine.stage import Funnel
from engine.stages import CHAIN, make_seed_batches

from engine.distributed.sharding import augment_dir, shard_dir

log = logging.getLogger("autoif.shard")

TICK_S = 1.0


async def _ticker(events: EventQueue, funnel: Funnel, series: TimeSeries) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        events.put(Tick(funnel.to_dict(), series.points[-1] if series.points else {}))


def _node() -> dict:
    node = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray
        if ray.is_initialized():
            node["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # not under Ray (tests of the phases), or an older Ray
        pass
    return node


async def _phase(spec: RunSpec, backend: str, store: RunStore, source, *, sink=None,
                 pool_needed: bool = True) -> AsyncIterator[ShardEvent]:
    """One phase through the shared run path, its events streamed as they come; the last
    event is Done with the phase's summary (stored when it completed)."""
    events = EventQueue()
    series = TimeSeries(interval_s=TICK_S)
    t0 = time.time()
    store.set_meta("worker", orjson.dumps(_node()).decode())   # who runs this phase now

    async def phase() -> dict:
        async with open_engine(spec.config, backend, spec.run_dir, store, pool_needed=pool_needed) as engine:
            tick = asyncio.create_task(_ticker(events, engine.ctx.funnel, series))
            try:
                summary = await run_shard(spec, engine, source, recorder=Streamed(store, events),
                                          sink=sink, series=series)
            finally:
                tick.cancel()
        summary["model"] = store.served_model or ""      # for the driver's provenance
        summary["served_models"] = store.served_models
        summary.update(t0=t0, node=_node())
        return summary

    task = asyncio.create_task(phase())
    async for ev in events.drain(task):
        yield ev
    yield Done(task.result())


def _replay(store: RunStore, summary: dict) -> list[ShardEvent]:
    """A finished shard's stored records and summary, as the events that made them."""
    verified = [v.to_dict() for v in store.verified()]
    return ([Verified(verified)] if verified else []) + in_parts([r.to_dict() for r in store.results()], Results) \
        + in_parts([s.to_dict() for s in store.sampled()], Sampled) + [Done({**summary, "replayed": True})]


# -- phase 1: augment --------------------------------------------------------------------

async def augment_events(cfg: Config, seeds: list[Instruction], *, backend: str,
                         run_dir: str | Path) -> AsyncIterator[ShardEvent]:
    directory = augment_dir(run_dir)
    store = RunStore.open(cfg, directory)
    try:
        ids = input_hash(s.id for s in seeds)
        stored = store.finished_summary(ids)
        if stored is not None:
            yield Done({**stored, "instructions": [i.to_dict() for i in store.augmented()], "replayed": True})
            return
        spec = RunSpec(cfg, directory, stages=CHAIN[:1], seeds=seeds)
        out: list[Instruction] = []
        source = make_seed_batches(seeds, cfg.augment.batches, cfg.augment.seeds_shown, cfg.run.seed)
        async for ev in _phase(spec, backend, store, source, sink=out.append, pool_needed=False):
            if isinstance(ev, Done):
                if ev.summary.get("stopped") == "completed":
                    store.finish_phase(ids, ev.summary)
                # the stage's outputs in the order it produced them (the same set as in the store)
                ev = Done({**ev.summary, "instructions": [i.to_dict() for i in out], "replayed": False})
            yield ev
    finally:
        store.close()


# -- phases 2..7: one shard ----------------------------------------------------------------

async def shard_events(cfg: Config, instructions: list[Instruction], *, index: int, n_shards: int,
                       backend: str, run_dir: str | Path,
                       queries: list[Query] | None = None) -> AsyncIterator[ShardEvent]:
    directory = shard_dir(run_dir, index, n_shards)
    store = RunStore.open(cfg, directory)
    try:
        ids = input_hash(i.id for i in instructions)
        stored = store.finished_summary(ids)
        if stored is not None:     # finished before (the driver died, or only merging is left)
            for ev in _replay(store, stored):
                yield ev
            return
        spec = RunSpec(cfg, directory, stages=CHAIN[1:], queries=queries)
        async for ev in _phase(spec, backend, store, instructions):
            if isinstance(ev, Done):
                for part in in_parts([s.to_dict() for s in store.sampled()], Sampled):
                    yield part                      # every graded prompt, for the GRPO export
                summary = {**ev.summary, "shard": index, "instructions": len(instructions)}
                if summary.get("stopped") == "completed":
                    store.save_funnel(summary["funnel"])
                    store.finish_phase(ids, summary)
                ev = Done({**summary, "replayed": False})
            yield ev
    finally:
        store.close()


# -- the Ray actor ---------------------------------------------------------------------------

class ShardWorker:
    """One engine per actor. Ray runs its async methods on one event loop, so `pid()` answers
    while `run_shard()` streams. Wrapped with ray.remote by the driver (ray stays optional)."""

    def __init__(self, cfg: dict, backend: str, run_dir: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.cfg = Config.from_flat(cfg)
        self.backend = backend
        self.run_dir = run_dir

    async def pid(self) -> int:
        return os.getpid()

    async def node(self) -> dict:
        return _node()

    async def set_servers(self, urls: list[str]) -> None:
        """Servers this node's host launched (`--node-serve`): volatile, the config hash stays."""
        self.cfg = self.cfg.replace_flat(servers=list(urls))

    async def augment(self, seeds: list[dict]) -> AsyncIterator[ShardEvent]:
        async for ev in augment_events(self.cfg, [Instruction.from_dict(s) for s in seeds],
                                       backend=self.backend, run_dir=self.run_dir):
            yield ev

    async def run_shard(self, index: int, n_shards: int, instructions: list[dict],
                        queries: list[dict] | None) -> AsyncIterator[ShardEvent]:
        qs = [Query.from_dict(q) for q in queries] if queries is not None else None
        async for ev in shard_events(self.cfg, [Instruction.from_dict(i) for i in instructions],
                                     index=index, n_shards=n_shards, backend=self.backend,
                                     run_dir=self.run_dir, queries=qs):
            yield ev
