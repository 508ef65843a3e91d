"""One shard's engine: the same stages, client, sandbox pool and state store as `autoif run`,
driven by a Ray actor (ShardWorker, below) or called directly (tests of the phases without Ray).

Two phases, each an async generator of events the driver consumes as they come:

- augment_events(): stage 1 (augment) once for the whole run; its output, the instructions, is
  what gets sharded. Its state is RUN_DIR/shards/augment/state.sqlite.
- shard_events(): stages 2..7 over one shard's instructions; state in the shard's own
  RUN_DIR/shards/NNNN-of-MMMM/state.sqlite.

Events are (kind, payload) tuples of plain JSON types:
    ("tick", {"funnel", "point"})       about once a second: live funnel and the latest sample
    ("verified", [VerifiedInstruction dicts])   back-translation outputs (for instruction DPO)
    ("results", [QueryResult dicts])    final records, streamed as each is scored
    ("sampled", [SampledPrompt dicts])  every graded prompt's K pass rates, once the shard ends
    ("done", summary)                   the phase finished; its funnel, stats and time series

Resume: every LLM answer is in the phase's SQLite cache before it is used, so a rerun after a
kill re-sends no answered request; records carry content ids, so re-emitted ones are the same
records (the driver stores them with INSERT OR IGNORE). A finished phase is marked in its store
and on a rerun just replays its stored records and summary, without starting any server.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator

import orjson

from engine.config import Config
from engine.job import Recorded, open_engine, open_store, run_stages, stored_query_budget
from engine.stages import (CHAIN, SAMPLED, AuditStage, AugmentStage, BackTranslateStage,
                           default_stages, make_seed_batches)
from engine.metrics import TimeSeries
from engine.records import Instruction, Query, QueryResult, SampledPrompt, VerifiedInstruction
from engine.stage import Context, Funnel

from engine.distributed.sharding import augment_dir, shard_dir

log = logging.getLogger("autoif.shard")

TICK_S = 1.0
DONE_KEY = "phase_done"          # meta: "1" once the phase finished (completed, not drained)
INPUT_KEY = "phase_input"        # meta: hash of the phase's input ids
SUMMARY_KEY = "phase_summary"    # meta: the phase's summary (JSON)


def input_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


async def _phase(cfg: Config, backend: str, directory: Path, store: Any, events: "_Events",
                 series: TimeSeries, stages: list, source: Any, sink: Any,
                 pool_needed: bool = True) -> dict:
    """One shard phase: its engine, a funnel ticker streaming to the driver, the stages."""

    async with open_engine(cfg, backend, directory, store, pool_needed=pool_needed) as (client, pool, ctx):
        tick = asyncio.create_task(_ticker(events, ctx.funnel, series))
        try:
            summary = await run_stages(cfg, stages, source, ctx, client=client, pool=pool,
                                       run_dir=directory, progress=False, sink=sink, series=series)
            summary["model"] = store.get_meta("served_model") or ""   # for the driver's provenance
            return summary
        finally:
            tick.cancel()


class _Events:
    """A queue of events with batching of records: what a phase emits, what the generator yields."""

    def __init__(self) -> None:
        self.q: asyncio.Queue = asyncio.Queue()

    def put(self, kind: str, payload: Any) -> None:
        self.q.put_nowait((kind, payload))

    async def drain(self, task: asyncio.Task) -> AsyncIterator[tuple[str, Any]]:
        """Yield events until `task` ends, merging consecutive record events into one batch.
        When the consumer goes away early (the driver died), the phase is cancelled."""
        try:
            while True:
                getter = asyncio.ensure_future(self.q.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    break
                for ev in self._batch(getter.result()):
                    yield ev
            if not self.q.empty():
                pending = [self.q.get_nowait() for _ in range(self.q.qsize())]
                for ev in self._batch_list(pending):
                    yield ev
            task.result()                   # re-raise what the phase raised
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def _batch_list(self, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        for item in items[1:]:
            self.q.put_nowait(item)
        return self._batch(items[0])

    def _batch(self, first: tuple[str, Any]) -> list[tuple[str, Any]]:
        out = [first]
        while not self.q.empty():
            kind, payload = self.q.get_nowait()
            last_kind, last_payload = out[-1]
            if kind == last_kind and kind in ("verified", "results"):
                out[-1] = (kind, last_payload + payload)
            elif kind == "tick" and last_kind == "tick":
                out[-1] = (kind, payload)   # only the newest tick matters
            else:
                out.append((kind, payload))
        return out


async def _ticker(events: _Events, funnel: Funnel, series: TimeSeries) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        events.put("tick", {"funnel": funnel.to_dict(),
                            "point": series.points[-1] if series.points else {}})


def _open_store(cfg: Config, directory: Path):
    return open_store(cfg, directory)


def _node() -> dict:
    node = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray
        if ray.is_initialized():
            node["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # not under Ray (tests of the phases), or an older Ray
        pass
    return node


# -- phase 1: augment --------------------------------------------------------------------

async def augment_events(cfg: Config, seeds: list[Instruction], *, backend: str,
                         run_dir: str | Path) -> AsyncIterator[tuple[str, Any]]:

    directory = augment_dir(run_dir)
    store = _open_store(cfg, directory)
    try:
        ids = input_hash([s.id for s in seeds])
        if store.get_meta(DONE_KEY) == "1" and store.get_meta(INPUT_KEY) == ids:
            summary = orjson.loads(store.get_meta(SUMMARY_KEY) or "{}")
            instructions = [i.to_dict() for i in store.iter_records(Instruction, "augment")]
            yield "done", {**summary, "instructions": instructions, "replayed": True}
            return
        store.set_meta("worker", orjson.dumps(_node()).decode())
        events = _Events()
        t0 = time.time()
        series = TimeSeries(interval_s=TICK_S)
        out: list[Instruction] = []

        stage = Recorded(AugmentStage.from_config(cfg, seeds), store, "augment")
        source = make_seed_batches(seeds, cfg.augment.batches, cfg.augment.seeds_shown, cfg.run.seed)
        task = asyncio.create_task(_phase(cfg, backend, directory, store, events, series, [stage],
                                          source, out.append, pool_needed=False))
        async for ev in events.drain(task):
            yield ev
        summary = task.result()
        summary.update(t0=t0, node=_node())
        if summary.get("stopped") == "completed":
            store.set_meta(SUMMARY_KEY, orjson.dumps(summary, default=str).decode())
            store.set_meta(INPUT_KEY, ids)
            store.set_meta(DONE_KEY, "1")
        # the stage's outputs in the order it produced them (the same set as in the store)
        yield "done", {**summary, "instructions": [i.to_dict() for i in out], "replayed": False}
    finally:
        store.close()


# -- phases 2..7: one shard ----------------------------------------------------------------

async def shard_events(cfg: Config, instructions: list[Instruction], *, index: int, n_shards: int,
                       backend: str, run_dir: str | Path,
                       queries: list[Query] | None = None) -> AsyncIterator[tuple[str, Any]]:

    directory = shard_dir(run_dir, index, n_shards)
    store = _open_store(cfg, directory)
    try:
        ids = input_hash([i.id for i in instructions])
        if store.get_meta(DONE_KEY) == "1" and store.get_meta(INPUT_KEY) == ids:
            # finished before (the driver died, or only merging is left): replay, start nothing
            verified = [v.to_dict() for v in store.iter_records(VerifiedInstruction, BackTranslateStage.name)]
            if verified:
                yield "verified", verified
            batch: list[dict] = []
            for r in store.iter_records(QueryResult, "final"):
                batch.append(r.to_dict())
                if len(batch) >= 256:
                    yield "results", batch
                    batch = []
            if batch:
                yield "results", batch
            for part in _sampled(store):
                yield "sampled", part
            summary = orjson.loads(store.get_meta(SUMMARY_KEY) or "{}")
            yield "done", {**summary, "replayed": True}
            return
        store.set_meta(INPUT_KEY, ids)
        store.set_meta("worker", orjson.dumps(_node()).decode())   # who runs this shard now
        events = _Events()
        t0 = time.time()
        series = TimeSeries(interval_s=TICK_S)

        class Streamed(Recorded):
            """Back-translation outputs: stored in the shard and streamed to the driver."""

            async def process(self, item: Any, ctx: Context) -> list:
                outs = await super().process(item, ctx)
                if outs:
                    events.put("verified", [o.to_dict() for o in outs])
                return outs

        def sink(result: QueryResult) -> None:
            store.put_records([result], "final")
            events.put("results", [result.to_dict()])

        # the audited instructions are the verified ones (stored under back-translation's label)
        stages = [Streamed(s, store, BackTranslateStage.name) if isinstance(s, AuditStage) else s
                  for s in default_stages(cfg, [], queries, names=CHAIN[1:],
                                          on_sampled=lambda s: store.put_records([s], SAMPLED),
                                          query_budget=stored_query_budget(cfg, store))]
        task = asyncio.create_task(_phase(cfg, backend, directory, store, events, series, stages,
                                          instructions, sink))
        async for ev in events.drain(task):
            yield ev
        summary = task.result()
        for part in _sampled(store):               # every graded prompt, for the GRPO export
            yield "sampled", part
        summary.update(t0=t0, node=_node(), shard=index, instructions=len(instructions))
        if summary.get("stopped") == "completed":
            store.save_funnel(summary["funnel"])
            store.set_meta(SUMMARY_KEY, orjson.dumps(summary, default=str).decode())
            store.set_meta(DONE_KEY, "1")
        yield "done", {**summary, "replayed": False}
    finally:
        store.close()


def _sampled(store: Any, size: int = 256):
    """The shard's SampledPrompt dicts, in parts of `size`."""
    rows = [s.to_dict() for s in store.iter_records(SampledPrompt, SAMPLED)]
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


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

    async def augment(self, seeds: list[dict]):
        async for ev in augment_events(self.cfg, [Instruction.from_dict(s) for s in seeds],
                                       backend=self.backend, run_dir=self.run_dir):
            yield ev

    async def run_shard(self, index: int, n_shards: int, instructions: list[dict],
                        queries: list[dict] | None):
        qs = [Query.from_dict(q) for q in queries] if queries is not None else None
        async for ev in shard_events(self.cfg, [Instruction.from_dict(i) for i in instructions],
                                     index=index, n_shards=n_shards, backend=self.backend,
                                     run_dir=self.run_dir, queries=qs):
            yield ev
