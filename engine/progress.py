"""Live progress line: requests/s, tokens/s, pool checks/s, queue depths, per-stage counts, ETA.

Rates come from deltas of cumulative counters read through `probe()` each tick, so the
reporter needs no hooks inside the client or the pool. On a terminal the line is redrawn
in place; otherwise (logs, CI) a full line is printed every `log_every_s`.
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Callable, TextIO

from engine.metrics import TimeSeries
from engine.runner import StreamRunner


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.1f}"


def _fmt_dur(s: float | None) -> str:
    if s is None or s != s or s == float("inf"):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """probe() returns cumulative counters: requests, completion_tokens, checks, pool_busy_s."""

    def __init__(self, runner: StreamRunner, probe: Callable[[], dict], *,
                 stream: TextIO | None = None, interval_s: float = 1.0,
                 log_every_s: float = 10.0, series: TimeSeries | None = None,
                 pool_workers: int = 1) -> None:
        self.runner = runner
        self.probe = probe
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.log_every_s = log_every_s
        self.series = series
        self.pool_workers = max(1, pool_workers)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._prev: dict = {}
        self._prev_t = 0.0
        self._t0 = 0.0
        self._last_log = 0.0
        self.last_line = ""

    def snapshot(self) -> dict:
        """Current rates and depths (also what the time series records)."""
        now = time.monotonic()
        cur = dict(self.probe())
        dt = max(now - self._prev_t, 1e-9) if self._prev else None
        rate = (lambda k: (cur.get(k, 0) - self._prev.get(k, 0)) / dt) if dt else (lambda k: 0.0)
        snap = {
            "req_s": rate("requests"), "tok_s": rate("completion_tokens"), "chk_s": rate("checks"),
            "pool_busy": min(1.0, rate("pool_busy_s") / self.pool_workers) if dt else 0.0,
            "queues": self.runner.queue_depths(),
            "in_flight": sum(self.runner.in_flight),
        }
        self._prev, self._prev_t = cur, now
        return snap

    def eta_s(self) -> float | None:
        """Extrapolates from the share of source items the first stage has finished."""
        total = self.runner.source_total
        first = self.runner.specs[0].stage.name
        funnel = self.runner.ctx.funnel.to_dict().get(first, {})
        done = funnel.get("in", 0) - self.runner.in_flight[0]
        if not total or done <= 0:
            return None
        elapsed = time.monotonic() - self._t0
        return elapsed * (total - done) / done

    def render(self, snap: dict) -> str:
        funnel = self.runner.ctx.funnel.to_dict()
        stages = " ".join(f"{s}:{r['in']}>{r['kept']}" for s, r in funnel.items())
        q = sum(snap["queues"].values())
        return (f"[{_fmt_dur(time.monotonic() - self._t0)}] gen {_fmt_rate(snap['req_s'])} req/s "
                f"{_fmt_rate(snap['tok_s'])} tok/s | pool {_fmt_rate(snap['chk_s'])} chk/s "
                f"busy {snap['pool_busy']:.0%} | queued {q} in-flight {snap['in_flight']} | "
                f"{stages} | ETA {_fmt_dur(self.eta_s())}")

    def tick(self) -> None:
        snap = self.snapshot()
        if self.series is not None:
            self.series.maybe_sample(lambda: {k: v for k, v in snap.items() if k != "queues"}
                                     | {f"q_{k}": v for k, v in snap["queues"].items()})
        self.last_line = self.render(snap)
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + self.last_line[:200])
            self.stream.flush()
        elif now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.stream.write(self.last_line + "\n")
            self.stream.flush()

    async def run(self) -> None:
        """Tick until cancelled; the caller cancels it when the runner returns."""
        self._t0 = time.monotonic()
        self._last_log = self._t0
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.tick()
        finally:
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
