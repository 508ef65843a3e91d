"""`SimServer`: the SGLang protocol simulator (a test double of SGLang's HTTP server).

    async with SimServer(SimConfig(...)) as sim:
        sim.url            # http://127.0.0.1:PORT
        await sim.outage(2.0)  # stop accepting for 2 s, drop in-flight work, come back

It runs in the caller's event loop (tests) or in the foreground via `autoif sim`.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from engine.sim import protocol as P
from engine.sim.app import SimApp
from engine.sim.config import SimConfig
from engine.sim.responders import Responder, load_responder
from engine.sim.scheduler import BatchScheduler, SimRequest
from engine.sim.tokens import count_tokens

log = logging.getLogger("engine.sim")


@dataclass
class SimCounters:
    """What the simulator saw; tests reconcile these with the client's own counters."""

    received: int = 0       # generation requests that reached a handler
    completed: int = 0      # full responses written (non-stream) / streams ended with [DONE]
    rejected: int = 0       # answered with the injected failure status
    bad_requests: int = 0   # refused with 400
    dropped: int = 0        # connection closed mid-request by fault injection
    stream_errors: int = 0  # streams ended with an in-stream error event
    aborted: int = 0        # streams whose client went away
    samples: int = 0        # completed samples (n per request)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class FaultPlan:
    drop: bool = False
    stream_error: bool = False
    slow: bool = False


class SimServer:
    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.config = config or SimConfig()
        for k, v in overrides.items():
            setattr(self.config, k, v)
        self.responder: Responder = load_responder(self.config.responder)
        self.counters = SimCounters()
        self.rng = random.Random(self.config.faults.seed)
        # (route, sampling params as the engine would see them) and (path, raw JSON body)
        self.request_log: deque[tuple[str, dict]] = deque(maxlen=2000)
        self.body_log: deque[tuple[str, dict]] = deque(maxlen=2000)
        self._prefix_cache: OrderedDict[int, int] = OrderedDict()  # running CRC of a prefix block
        self._cache_queries = 0
        self._cache_hits = 0
        self.scheduler: BatchScheduler | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = self.config.port
        self.down = False
        self.started_at = 0.0
        self.e2e_sum = 0.0

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def name(self) -> str:
        return self.config.name or self.url

    async def start(self) -> "SimServer":
        self.scheduler = BatchScheduler(self.config.latency)
        self.scheduler.start()
        self._runner = web.AppRunner(SimApp(self).build(), access_log=None,
                                     handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen(self.config.port)
        self.started_at = time.monotonic()
        if self.config.faults.outage_at is not None:
            self._spawn(self._scheduled_outage())
        log.info("SGLang simulator (test double) listening on %s", self.url)
        return self

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._site = None

    async def __aenter__(self) -> "SimServer":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.config.host, port, reuse_address=True)
        await site.start()
        self._site = site
        if port == 0:
            server = site._server  # the bound port is only known from the socket
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- "die and come back" ---------------------------------------------------------
    async def go_down(self) -> None:
        """Stop accepting connections, cut open ones and lose all in-flight work."""
        if self.down or self._site is None or self._runner is None:
            return
        self.down = True
        await self._site.stop()
        self._site = None
        assert self.scheduler is not None
        self.scheduler.abort_all("Server died (simulated outage).")
        for conn in self._runner.server.connections:  # type: ignore[union-attr]
            conn.force_close()
        log.info("simulator %s: down", self.name)

    async def come_back(self) -> None:
        if not self.down:
            return
        await self._listen(self.port)
        self.down = False
        log.info("simulator %s: back up", self.name)

    async def outage(self, seconds: float) -> None:
        """Go down now and come back after `seconds` (returns at once)."""
        await self.go_down()

        async def later() -> None:
            await asyncio.sleep(seconds)
            await self.come_back()

        self._spawn(later())

    async def _scheduled_outage(self) -> None:
        f = self.config.faults
        await asyncio.sleep(f.outage_at or 0.0)
        await self.outage(f.outage_for)

    # -- used by the handlers --------------------------------------------------------
    def respond(self, prompt: Any, sampling_params: dict, index: int) -> str:
        out = self.responder(prompt, sampling_params, index)
        return out if isinstance(out, str) else str(out)

    def draw_reject(self) -> bool:
        f = self.config.faults
        return f.fail_rate > 0 and self.rng.random() < f.fail_rate

    def draw_faults(self, stream: bool) -> FaultPlan:
        f = self.config.faults
        plan = FaultPlan()
        if f.drop_rate > 0 and self.rng.random() < f.drop_rate:
            plan.drop = True
        elif stream and f.stream_error_rate > 0 and self.rng.random() < f.stream_error_rate:
            plan.stream_error = True
        if f.slow_first_token_rate > 0 and self.rng.random() < f.slow_first_token_rate:
            plan.slow = True
        return plan

    def log_request(self, route: str, sampling_params: dict) -> None:
        self.request_log.append((route, sampling_params))

    def finish_ok(self, samples: list[SimRequest]) -> None:
        c = self.counters
        c.completed += 1
        c.samples += len(samples)
        c.prompt_tokens += samples[0].prompt_tokens
        c.cached_tokens += samples[0].cached_tokens
        for s in samples:
            c.completion_tokens += s.emitted
            self.e2e_sum += s.finished_at - s.arrived

    def prefix_cache_lookup(self, text: str, prompt_tokens: int) -> int:
        """Radix-cache stand-in: tokens of the longest previously seen prompt prefix.

        Prefixes are remembered in 64-character blocks (up to 8 KiB of prompt) under a
        running CRC, so two prompts sharing a long system prompt or query share cache.
        """
        self._cache_queries += 1
        cache = self._prefix_cache
        block, limit = 64, min(len(text), 8192)
        crc, hit_chars, keys = 0, 0, []
        for start in range(0, limit - limit % block, block):
            crc = zlib.crc32(text[start:start + block].encode(), crc)
            keys.append(crc)
            if crc in cache:
                cache.move_to_end(crc)
                hit_chars = start + block
        rest = text[len(keys) * block:] if len(text) <= limit else ""
        if rest:  # the ragged tail, so a whole short prompt can hit too
            whole = zlib.crc32(rest.encode(), crc) ^ 0x5BD1E995
            keys.append(whole)
            if whole in cache and hit_chars == len(text) - len(rest):
                hit_chars = len(text)
        for key in keys:
            cache[key] = 1
        while len(cache) > self.config.prefix_cache_entries:
            cache.popitem(last=False)
        if not hit_chars:
            return 0
        self._cache_hits += 1
        if hit_chars >= len(text):
            return prompt_tokens
        return min(prompt_tokens, count_tokens(text[:hit_chars]))

    def flush_cache(self) -> bool:
        sched = self.scheduler
        if sched is not None and (sched.num_running or sched.num_waiting):
            return False  # SGLang refuses while requests are running or waiting
        self._prefix_cache.clear()
        return True

    # -- introspection endpoints -----------------------------------------------------
    def server_info(self) -> dict:
        cfg, lat = self.config, self.config.latency
        sched = self.scheduler
        server_args = {
            "model_path": cfg.model_path, "tokenizer_path": cfg.model_path,
            "served_model_name": cfg.model, "host": cfg.host, "port": self.port,
            "max_running_requests": lat.max_running, "max_total_tokens": cfg.max_total_tokens,
            "context_length": cfg.context_len, "chunked_prefill_size": 8192,
            "tp_size": 1, "dp_size": 1, "schedule_policy": "fcfs",
            "enable_metrics": True, "disable_radix_cache": False,
        }
        return {
            **server_args,
            "max_total_num_tokens": cfg.max_total_tokens,
            "max_req_input_len": cfg.context_len - 8,
            "internal_states": [{
                "last_gen_throughput": sched.gen_throughput if sched else 0.0,
                "memory_usage": {"kvcache": 0.0, "token_capacity": cfg.max_total_tokens},
                "waiting_queue_size": sched.num_waiting if sched else 0,
                "running_batch_size": sched.num_running if sched else 0,
            }],
            "version": "sim-0.1 (SGLang protocol test double)",
            "simulator": {"latency": asdict(lat), "faults": asdict(cfg.faults),
                          "counters": asdict(self.counters)},
        }

    def metrics_text(self) -> str:
        sched = self.scheduler
        labels = {"model_name": self.config.model, "engine_type": "unified"}
        c = self.counters
        running = sched.num_running if sched else 0
        waiting = sched.num_waiting if sched else 0
        used = sum(s.prompt_tokens + s.emitted for s in (sched.running if sched else []))
        hit_rate = self._cache_hits / self._cache_queries if self._cache_queries else 0.0
        samples = [
            ("sglang:num_running_reqs", "gauge", "The number of running requests.", running),
            ("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.", waiting),
            ("sglang:num_used_tokens", "gauge", "The number of used tokens.", used),
            ("sglang:token_usage", "gauge", "The token usage.", used / max(1, self.config.max_total_tokens)),
            ("sglang:gen_throughput", "gauge", "The generation throughput (token/s).",
             sched.gen_throughput if sched else 0.0),
            ("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", hit_rate),
            ("sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.", c.prompt_tokens),
            ("sglang:generation_tokens_total", "counter", "Number of generation tokens processed.",
             c.completion_tokens),
            ("sglang:cached_tokens_total", "counter", "Number of cached prompt tokens.", c.cached_tokens),
            ("sglang:num_requests_total", "counter", "Number of requests processed.", c.completed),
            ("sglang:num_aborted_requests_total", "counter", "Number of requests aborted.", c.aborted),
            ("sglang:e2e_request_latency_seconds_bucket", "histogram",
             "Histogram of End-to-end request latency in seconds", c.samples),
            ("sglang:e2e_request_latency_seconds_sum", "histogram",
             "Histogram of End-to-end request latency in seconds", self.e2e_sum),
            ("sglang:e2e_request_latency_seconds_count", "histogram",
             "Histogram of End-to-end request latency in seconds", c.samples),
        ]
        return P.prometheus_text(
            (name, kind, doc, {**labels, "le": "+Inf"} if name.endswith("_bucket") else labels, value)
            for name, kind, doc, value in samples)
