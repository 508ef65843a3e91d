"""The simulator's continuous-batching scheduler: one asyncio task stepping the batch.

Requests wait in a FIFO queue; each step admits as many as fit under `max_running`,
charges their prefill, then decodes one token for every running request. Handlers wait
on a request's `progress` event (streaming) or its `done` future (non-streaming), so
queueing, batch-size-dependent step time and time-to-first-token all emerge from the
loop rather than from per-request sleeps.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.sim.config import LatencyModel


@dataclass(eq=False)
class SimRequest:
    """One sample being generated. `pieces` is the full (already truncated) output."""

    rid: str
    prompt_tokens: int
    pieces: list[str]
    finish_reason: dict
    cached_tokens: int = 0
    index: int = 0
    emitted: int = 0
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float = 0.0
    finished_at: float = 0.0
    aborted: bool = False
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def finished(self) -> bool:
        return self.done.done()

    def text(self, upto: int | None = None) -> str:
        return "".join(self.pieces[: self.emitted if upto is None else upto])

    def text_range(self, start: int, end: int) -> str:
        return "".join(self.pieces[start:end])

    def meta_info(self) -> dict:
        """SGLang's meta_info keys (tokenizer_manager.py, _handle_batch_output)."""
        meta: dict[str, Any] = {
            "id": self.rid,
            "finish_reason": self.finish_reason if self.finished else None,
            "prompt_tokens": self.prompt_tokens,
            "weight_version": "default",
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": self.emitted,
            "cached_tokens": self.cached_tokens,
        }
        if self.finished:
            meta["e2e_latency"] = round(self.finished_at - self.arrived, 6)
        return meta

    def _finish(self, now: float, reason: dict | None = None) -> None:
        if reason is not None:
            self.finish_reason = reason
        self.finished_at = now
        if not self.done.done():
            self.done.set_result(None)
        self.progress.set()

    def abort(self, message: str = "Aborted by AbortReq.") -> None:
        if not self.finished:
            self.aborted = True
            self._finish(time.monotonic(), {"type": "abort", "message": message,
                                             "status_code": None, "err_type": None})


class BatchScheduler:
    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.gen_throughput = 0.0          # EMA of tokens/s, exported as sglang:gen_throughput
        self.generated_tokens = 0
        self.prefilled_tokens = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-scheduler")

    async def stop(self) -> None:
        self.abort_all("Server shutting down.")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # -- requests --------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        if self.model.zero_latency:
            # benchmark mode: everything is produced at once, no clock
            now = time.monotonic()
            req.emitted = len(req.pieces)
            req.first_token_at = now
            self.generated_tokens += req.emitted
            self.prefilled_tokens += req.prompt_tokens - req.cached_tokens
            req._finish(now)
            return
        self.waiting.append(req)
        self._wake.set()

    def abort(self, rid_prefix: str) -> int:
        """Abort every request whose rid starts with `rid_prefix` (SGLang matches prefixes)."""
        n = 0
        for req in list(self.waiting) + self.running:
            if req.rid.startswith(rid_prefix) and not req.finished:
                req.abort()
                n += 1
        return n

    def abort_all(self, message: str) -> None:
        for req in list(self.waiting) + self.running:
            req.abort(message)
        self.waiting.clear()
        self.running.clear()

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # -- the loop --------------------------------------------------------------------
    async def _loop(self) -> None:
        model = self.model
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
            prefill = 0
            while self.waiting and len(self.running) < model.max_running:
                req = self.waiting.popleft()
                if req.finished:  # aborted while queued
                    continue
                self.running.append(req)
                prefill += req.prompt_tokens - req.cached_tokens
            self.prefilled_tokens += prefill
            if not self.running:
                continue
            dt = model.step_seconds(len(self.running), prefill)
            await asyncio.sleep(dt)
            now = time.monotonic()
            still: list[SimRequest] = []
            produced = 0
            for req in self.running:
                if req.finished:
                    continue
                if req.emitted < len(req.pieces):
                    req.emitted += 1
                    produced += 1
                    if req.emitted == 1:
                        req.first_token_at = now
                if req.emitted >= len(req.pieces):
                    req._finish(now)
                else:
                    req.progress.set()
                    still.append(req)
            self.running = still
            self.generated_tokens += produced
            if dt > 0:
                self.gen_throughput = 0.8 * self.gen_throughput + 0.2 * (produced / dt)
