"""Live progress line: requests/s, tokens/s, pool checks/s, queue depths, per-stage counts, ETA.

Rates come from deltas of cumulative counters read through `probe()` each tick, so the
reporter needs no hooks inside the client or the pool. On a terminal the line is redrawn
in place; otherwise (logs, CI) a full line is printed every `log_every_s`.
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
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
        self.window_s = 10.0
        self._window: deque[tuple[float, dict]] = deque()

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
        """Remaining work of every stage, from the fan-out and time per item seen so far.

        Stage i expects as many inputs as stage i-1 is expected to emit (source total times
        the observed out/in ratios); its remaining items cost its mean time per item divided
        by its concurrency. Stages share the LLM server, so their remaining times add up.
        Unknown ("--:--") until every stage has finished at least one item.
        """
        expected = self.runner.source_total
        if not expected:
            return None
        funnel = self.runner.ctx.funnel.to_dict()
        eta = 0.0
        for i, spec in enumerate(self.runner.specs):
            done = self.runner.finished[i]
            row = funnel.get(spec.stage.name)
            if not done or row is None:
                return None
            eta += max(0.0, expected - done) * (self.runner.busy_s[i] / done) / spec.concurrency
            expected *= row["out"] / done
        return eta

    def windowed_rates(self) -> dict:
        """Rates over the last `window_s` (a slow model answers less than once a second)."""
        now = time.monotonic()
        cur = self._prev or dict(self.probe())   # the counters snapshot() just read
        self._window.append((now, cur))
        while len(self._window) > 2 and now - self._window[0][0] > self.window_s:
            self._window.popleft()
        t0, old = self._window[0]
        dt = now - t0
        if dt <= 0:
            return {"req_s": 0.0, "tok_s": 0.0, "chk_s": 0.0}
        return {k: (cur.get(src, 0) - old.get(src, 0)) / dt
                for k, src in (("req_s", "requests"), ("tok_s", "completion_tokens"), ("chk_s", "checks"))}

    def render(self, snap: dict) -> str:
        funnel = self.runner.ctx.funnel.to_dict()
        # main stages only; sub-item rows ("verifiers.answer") are in the final funnel table
        stages = " ".join(f"{s}:{r['in']}>{r['kept']}" for s, r in funnel.items() if "." not in s)
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
        self.last_line = self.render(snap | self.windowed_rates())
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
