"""The Ray driver of `autoif run --ray [ADDRESS]`: start shard actors, stream their results back,
merge, export.

1. Actor 0 runs stage 1 (augment) once: dedup needs every proposal of the run in one place.
2. Its instructions are split by `shard_of(instruction id, N)`; shard i's actor runs stages
   2..7 over its part with its own sandbox pool and its own SQLite file, against shared
   servers (`--server`), servers started per node (`--node-serve`), or its own (`--backend`).
3. Every record a shard makes is streamed back (Ray streaming generators) and stored by the
   driver in RUN_DIR/state.sqlite with INSERT OR IGNORE; the funnel is the augment funnel plus
   each shard's; the exports and summary.json are those of a single-node run.

A shard whose actor dies (node lost, process killed) is started again on a new actor, up to
`max_restarts` times; it resumes from its SQLite file, so no answered request is sent again and
the records it re-emits are the same records. Killing the driver kills its actors (they are not
detached); running the same command again resumes every shard the same way.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from engine.config import Config
from engine.errors import JobError
from engine.demo import DEMO_SEEDS
from engine.run import (Done, Results, RunStore, Sampled, ShardEvent, Tick, Verified, export_grpo_run,
                        export_run, preflight, run_start, write_summary)
from engine.metrics import LiveCollector, RunMetrics, TimeSeries
from engine.records import Instruction, QueryResult, SampledPrompt, VerifiedInstruction
from engine.observe import Distributions
from engine.stage import Funnel
from engine.stats import sum_numbers

from engine.distributed.sharding import (balance, existing_shard_counts, partition, shard_name)
from engine.distributed.worker import ShardWorker

log = logging.getLogger("autoif.ray")

SAMPLE_S = 1.0


def _ray():
    try:
        import ray
    except ImportError:
        raise JobError("--ray needs Ray: pip install 'autoif-engine[ray]'") from None
    return ray


def _recoverable(ray: Any, exc: BaseException) -> bool:
    """An actor or its node went away (retry the shard), as opposed to an error in our code."""
    ex = ray.exceptions
    kinds = tuple(k for k in (getattr(ex, "RayActorError", None), getattr(ex, "ActorDiedError", None),
                              getattr(ex, "ActorUnavailableError", None),
                              getattr(ex, "ObjectLostError", None), getattr(ex, "NodeDiedError", None),
                              getattr(ex, "WorkerCrashedError", None)) if k)
    return isinstance(exc, kinds)


class NodeServer:
    """`autoif serve` on one node, for the shards that run there (`--node-serve BACKEND`).

    Holds the node's GPUs in Ray's accounting, so the serve process sees them all and places
    replicas on disjoint GPU sets itself. Stops the server when the actor goes away.
    """

    def __init__(self, backend: str, args: Sequence[str], run_dir: str, replicas: int) -> None:
        import socket
        self.log_dir = Path(run_dir) / "servers" / socket.gethostname()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--backend", backend,
               "--replicas", str(replicas), "--run-dir", str(self.log_dir)]
        extra = list(args)
        if extra:
            cmd += ["--", *extra] if extra[0] != "--" else extra
        self.cmd = cmd
        self.stderr = open(self.log_dir / "serve.stderr", "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
                                     text=True)
        self.replicas = replicas
        self.urls: list[str] = []

    def urls_when_ready(self) -> list[str]:
        while len(self.urls) < self.replicas:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"`{shlex.join(self.cmd)}` exited ({self.proc.wait()}); "
                                   f"see {self.log_dir / 'serve.stderr'}")
            if line.strip().startswith("http"):
                self.urls.append(line.strip())
        return self.urls

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


@dataclass(frozen=True)
class RayOptions:
    """How a sharded run uses its Ray cluster. `address`: None for RAY_ADDRESS, the cluster
    `ray start` made here, or a new local one; `shards`: None for one per alive node;
    `node_serve`: a backend started once on each node that runs shards, with `node_serve_args`."""

    address: str | None = None
    shards: int | None = None
    shard_cpus: float = 1.0
    shard_gpus: float = 0.0
    node_serve: str | None = None
    node_serve_args: tuple[str, ...] = ()
    max_restarts: int = 3


class Driver:
    """One sharded run. `actors` (shard index -> actor handle) and `received` (records per
    shard) are public so tests and tools can watch or disturb the run."""

    def __init__(self, cfg: Config, ray: RayOptions = RayOptions(), *, backend: str = "embedded",
                 demo: bool = False, metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                 progress: bool = True) -> None:
        self.cfg = cfg
        self.started: dict = {}      # run_start(), taken when run() begins
        self.n = ray.shards
        self.backend = backend
        self.demo = demo
        self.address = ray.address
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.progress = progress
        self.shard_cpus = ray.shard_cpus
        self.shard_gpus = ray.shard_gpus
        self.node_serve = ray.node_serve
        self.node_serve_args = list(ray.node_serve_args)
        self.max_restarts = ray.max_restarts
        self.run_dir = Path(cfg.run.output_dir).resolve()
        self.tag = hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:8]
        self.actors: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.live: dict[int, dict] = {}          # shard -> its last tick
        self.augment_funnel: dict = {}
        self.done: dict[int, dict] = {}
        self.node_servers: dict[str, Any] = {}
        self.series = TimeSeries(interval_s=SAMPLE_S)
        self.phase = "augment"
        self.sizes: list[int] = []               # instructions per shard, once split
        self.ray: Any = None
        self._store: RunStore | None = None
        self._augment_sink: dict = {}
        self._verified: dict[str, VerifiedInstruction] = {}   # by id: the results name them so

    # -- set-up ----------------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self.ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False,
                     log_to_driver=True, logging_level=logging.WARNING)
        if self.n is None:
            self.n = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))

    def _actor(self, index: int) -> Any:
        ray = self.ray
        attempt = self.restarts.get(index, 0)
        cls = ray.remote(ShardWorker)
        handle = cls.options(
            name=f"autoif-{self.tag}-{os.getpid()}-shard-{index}-try-{attempt}", num_cpus=self.shard_cpus,
            num_gpus=self.shard_gpus or None, max_restarts=0, max_concurrency=64,
            scheduling_strategy="SPREAD").remote(self.cfg.flat(), self.backend, str(self.run_dir))
        self.actors[index] = handle
        return handle

    async def _with_servers(self, handle: Any) -> None:
        """Point a shard at its node's servers, starting them on first use (`--node-serve`)."""
        if not self.node_serve:
            return
        ray = self.ray
        info = await handle.node.remote()
        node_id = info["node_id"]
        if node_id not in self.node_servers:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            gpus = next((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes()
                         if n.get("NodeID") == node_id), 0)
            replicas = 1
            if self.node_serve == "sglang" and gpus:
                tp = _flag_value(self.node_serve_args, "--tp", 1)
                replicas = max(1, int(gpus) // tp)
            cls = ray.remote(NodeServer)
            srv = cls.options(num_cpus=0, num_gpus=gpus or None,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                              ).remote(self.node_serve, self.node_serve_args, str(self.run_dir), replicas)
            self.node_servers[node_id] = (srv, srv.urls_when_ready.remote())
        srv, urls_ref = self.node_servers[node_id]
        urls = await urls_ref
        log.info("shard on %s uses %s", info.get("host"), ", ".join(urls))
        await handle.set_servers.remote(urls)

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> dict:
        self.started = run_start()
        self._connect()
        n = self.n
        seeds, queries = preflight(self.cfg, self.run_dir)   # refused in one line before any work
        store = RunStore.open(self.cfg, self.run_dir)
        try:
            store.claim("sharded", f"--output-dir {self.run_dir}")
        except JobError:
            store.close()
            raise
        old = store.get_meta("shards")
        if old is not None and int(old) != n or (existing_shard_counts(self.run_dir) - {n}):
            before = old or ",".join(map(str, sorted(existing_shard_counts(self.run_dir))))
            store.close()
            raise JobError(f"{self.run_dir} was run with --shards {before}; rerun with that many "
                           "(each shard's answers are cached in its own state file)")
        store.set_meta("shards", str(n))
        try:
            if self.demo:
                seeds = seeds[:DEMO_SEEDS]
            return await self._run(store, seeds, queries)
        finally:
            store.close()
            for srv, _ in self.node_servers.values():
                with contextlib.suppress(Exception):
                    await srv.stop.remote()
            for handle in self.actors.values():
                with contextlib.suppress(Exception):
                    self.ray.kill(handle, no_restart=True)

    async def _run(self, store: Any, seeds: list[Instruction], queries: list) -> dict:
        t0 = time.perf_counter()
        self.series = TimeSeries(interval_s=SAMPLE_S)      # t = 0 when the work starts
        metrics = RunMetrics()
        funnel_now = lambda: self._merged_funnel(live=True).to_dict()  # noqa: E731
        metrics.attach(LiveCollector(stats=self._stats_now,
                                     point=lambda: self.series.points[-1] if self.series.points else {},
                                     queues=self._queues_now, funnel=funnel_now))
        if self.metrics_port:
            metrics.serve(self.metrics_port, self.metrics_host)
            log.info("metrics at http://%s:%d/metrics", self.metrics_host, self.metrics_port)
        sampler = asyncio.create_task(self._sample(t0))
        self._store = store
        try:
            augment = await self._augment(seeds)
            self.phase = "shards"
            self.live.clear()
            instructions = [Instruction.from_dict(d) for d in augment["instructions"]]
            parts = partition(instructions, self.n)
            self.sizes = [len(p) for p in parts]
            log.info("%d instructions in %d shards (%s; largest/mean %.2f)", len(instructions), self.n,
                     " ".join(str(len(p)) for p in parts), balance([len(p) for p in parts]))
            qdicts = [q.to_dict() for q in queries]
            tasks = [asyncio.create_task(self._shard(i, parts[i], qdicts)) for i in range(self.n)]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:              # one shard failed for good: stop the others too
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception():
                    raise t.exception()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            metrics.close()
        return self._finish(store, augment, t0)

    async def _stream(self, index: int, call) -> None:
        """Run `call(handle)` (a streaming method) on shard `index`'s actor, retrying on a new
        actor when the old one dies."""
        ray = self.ray
        while True:
            handle = self.actors.get(index) or self._actor(index)
            try:
                await self._with_servers(handle)
                gen = call(handle)
                async for ref in gen:
                    self._on_event(index, await ref)
                return
            except Exception as exc:
                if isinstance(exc, ray.exceptions.RayTaskError):
                    cause = getattr(exc, "cause", None) or exc
                    raise JobError(f"shard {index}: {type(cause).__name__}: {str(cause)[-500:]}") from None
                if not _recoverable(ray, exc):
                    raise
                self.restarts[index] = self.restarts.get(index, 0) + 1
                if self.restarts[index] > self.max_restarts:
                    raise JobError(f"shard {index}: actor lost {self.restarts[index]} times; "
                                   f"last: {type(exc).__name__}: {str(exc)[:300]}") from None
                log.warning("shard %d: actor lost (%s); restarting it (%d/%d), resuming from %s",
                            index, type(exc).__name__, self.restarts[index], self.max_restarts,
                            shard_name(index, self.n))
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)
                self.actors.pop(index, None)
                self.live.pop(index, None)

    async def _augment(self, seeds: list[Instruction]) -> dict:
        out: dict = {}
        seeds_d = [s.to_dict() for s in seeds]

        def call(handle):
            return handle.augment.options(num_returns="streaming").remote(seeds_d)

        self._augment_sink = out
        await self._stream(0, call)
        self.augment_funnel = out.get("funnel", {})
        return out

    async def _shard(self, index: int, part: list[Instruction], queries: list[dict]) -> None:
        part_d = [i.to_dict() for i in part]

        def call(handle):
            return handle.run_shard.options(num_returns="streaming").remote(index, self.n, part_d, queries)

        await self._stream(index, call)

    def _on_event(self, index: int, ev: ShardEvent) -> None:
        if isinstance(ev, Tick):
            self.live[index] = {"funnel": ev.funnel, "point": ev.point}
        elif isinstance(ev, Verified):
            verified = [VerifiedInstruction.from_dict(d) for d in ev.records]
            self._verified.update((v.id, v) for v in verified)
            self._store.put_verified(verified)
        elif isinstance(ev, Sampled):
            self._store.put_sampled([SampledPrompt.from_dict(d, self._verified) for d in ev.records])
        elif isinstance(ev, Results):      # a shard sends an instruction before its results
            self._store.put_results([QueryResult.from_dict(d, self._verified) for d in ev.records])
            self.received[index] = self.received.get(index, 0) + len(ev.records)
        elif isinstance(ev, Done):
            payload = ev.summary
            if self.phase == "augment":
                self._augment_sink.update(payload)
                self.augment_funnel = payload.get("funnel", {})
            else:
                self.done[index] = payload
                self.live.pop(index, None)
                log.info("shard %d done: %d results, %.1fs%s", index, payload.get("sink_items", 0),
                         payload.get("wall_s", 0.0), " (replayed)" if payload.get("replayed") else "")

    # -- live views ------------------------------------------------------------------------
    def _merged_funnel(self, live: bool = False) -> Funnel:
        f = Funnel()
        if self.phase == "augment":
            if live:
                f.merge(self.live.get(0, {}).get("funnel", {}))
            return f
        f.merge(self.augment_funnel)
        for i in range(self.n or 0):
            if i in self.done:
                f.merge(self.done[i].get("funnel", {}))
            elif live and i in self.live:
                f.merge(self.live[i].get("funnel", {}))
        return f

    def _points(self) -> list[dict]:
        return [t.get("point", {}) for t in self.live.values() if t.get("point")]

    def _stats_now(self) -> dict:
        pts = self._points()
        return {"in_flight": sum(p.get("in_flight", 0) for p in pts)}

    def _queues_now(self) -> dict:
        out: dict[str, int] = {}
        for p in self._points():
            for k, v in p.items():
                if k.startswith("q_"):
                    out[k[2:]] = out.get(k[2:], 0) + v
        return out

    async def _sample(self, t0: float) -> None:
        """The run's time series: each second, the shards' latest samples added up."""
        last_log = time.perf_counter()
        while True:
            await asyncio.sleep(SAMPLE_S)
            pts = self._points()
            point: dict[str, float] = {"shards_active": len(pts)}
            for key in ("req_s", "tok_s", "chk_s", "in_flight"):
                point[key] = round(sum(p.get(key, 0.0) for p in pts), 3)
            point["pool_busy"] = round(sum(p.get("pool_busy", 0.0) for p in pts) / len(pts), 4) if pts else 0.0
            for k, v in self._queues_now().items():
                point[f"q_{k}"] = v
            self.series.maybe_sample(lambda: point)
            if self.progress and time.perf_counter() - last_log >= 10:
                last_log = time.perf_counter()
                print(f"[ray {time.perf_counter() - t0:.0f}s] shards done {len(self.done)}/{self.n} | "
                      f"gen {point['req_s']:.1f} req/s {point['tok_s']:.0f} tok/s | pool "
                      f"{point['chk_s']:.1f} chk/s busy {point['pool_busy']:.0%} | results "
                      f"{sum(self.received.values())}", file=sys.stderr, flush=True)

    # -- the end ---------------------------------------------------------------------------
    def _finish(self, store: Any, augment: dict, t0: float) -> dict:
        funnel = self._merged_funnel()
        shards = [self.done[i] for i in range(self.n)]
        served = next((p.get("model") for p in [augment, *shards] if p.get("model")), None)
        if served and not store.served_model:
            store.served_model = served                # the name the shards' servers reported
        roles = {k: v for p in [augment, *shards] for k, v in (p.get("served_models") or {}).items()}
        if roles and not store.served_models:
            store.served_models = roles
        grpo = export_grpo_run(self.cfg, store, self.run_dir / "exports", funnel)
        files = export_run(self.cfg, store, self.run_dir / "exports", funnel=funnel)
        stopped = "completed" if all(s.get("stopped") == "completed" for s in shards) \
            and augment.get("stopped") == "completed" else "drained"
        summary = {
            "wall_s": round(time.perf_counter() - t0, 3),
            "source_items": augment.get("source_items", 0),
            "sink_items": sum(s.get("sink_items", 0) for s in shards),
            "stopped": stopped,
            "funnel": funnel.to_dict(),
            "stages": _merge_stages([augment.get("stages", {})] + [s.get("stages", {}) for s in shards]),
            "client": sum_numbers([augment.get("client", {})] + [s.get("client", {}) for s in shards]),
            "pool": sum_numbers([s.get("pool", {}) for s in shards]),
            "timeseries": self.series.to_list(),
            "distributions": Distributions.merge([s.get("distributions", {}) for s in shards]),
            "config": self.cfg.public_dict(),
            "ray": {"shards": self.n, "restarts": dict(self.restarts),
                    "instructions_per_shard": [s.get("instructions", 0) for s in shards]},
            "shards": [{k: s.get(k) for k in ("shard", "node", "instructions", "wall_s", "sink_items",
                                               "stopped", "replayed", "t0", "client", "pool",
                                               "timeseries")} for s in shards],
        }
        summary.update(self.started, model=store.model_name(self.cfg), models=store.model_names(self.cfg),
                       config_hash=self.cfg.config_hash())
        store.save_funnel(summary["funnel"])
        summary["grpo"] = grpo.to_dict()
        summary["exports"] = {k: str(v) for k, v in {**files, **grpo.files}.items()}
        write_summary(self.run_dir, "summary.json", summary, funnel)
        return summary


def _flag_value(args: Sequence[str], flag: str, default: int) -> int:
    args = list(args)
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith(flag + "="):
            return int(a.split("=", 1)[1])
    return default


def _merge_stages(parts: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for part in parts:
        for stage, row in (part or {}).items():
            cur = out.setdefault(stage, {})
            for k, v in row.items():
                cur[k] = round(cur.get(k, 0) + v, 3)
    return out


async def run_sharded(cfg: Config, ray: RayOptions, **kw: Any) -> dict:
    return await Driver(cfg, ray, **kw).run()
