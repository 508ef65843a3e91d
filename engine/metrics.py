"""Run metrics: Prometheus counters/histograms per stage, a bounded time series, a JSON summary.

Exposition is prometheus-client's (not hand-written); each run has its own registry so
several runs in one process (tests, benchmarks) never share counters.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds buckets for one item's trip through one stage (LLM calls dominate).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))


class RunMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Counter("autoif_stage_items", "Items per stage and outcome",
                             ["stage", "outcome"], registry=self.registry)
        self.latency = Histogram("autoif_stage_seconds", "Time one item spends in a stage",
                                 ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._gauges: dict[str, Gauge] = {}
        self._server = None

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when scraped (queue depths, requests in flight, pool busy fraction)."""
        g = Gauge(name, help_text, registry=self.registry)
        g.set_function(read)
        self._gauges[name] = g

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def summary(self) -> dict:
        """Counters and latency quantile estimates per stage, for the end-of-run JSON."""
        out: dict[str, dict] = {}
        for metric in self.registry.collect():
            if metric.name == "autoif_stage_items":
                for s in metric.samples:
                    if s.name.endswith("_total"):
                        out.setdefault(s.labels["stage"], {})[s.labels["outcome"]] = int(s.value)
            elif metric.name == "autoif_stage_seconds":
                for s in metric.samples:
                    if s.name.endswith("_sum"):
                        out.setdefault(s.labels["stage"], {})["busy_s"] = round(s.value, 3)
                    elif s.name.endswith("_count"):
                        out.setdefault(s.labels["stage"], {})["timed"] = int(s.value)
        return out


class TimeSeries:
    """Fixed-interval samples in bounded memory: when full, halve the resolution."""

    def __init__(self, interval_s: float = 1.0, max_points: int = 2048) -> None:
        self.interval_s = interval_s
        self.max_points = max_points
        self.points: deque[dict] = deque()
        self._t0 = time.monotonic()
        self._last = -float("inf")

    def maybe_sample(self, read: Callable[[], dict]) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        point = {"t": round(now - self._t0, 3)}
        point.update(read())
        self.points.append(point)
        if len(self.points) >= self.max_points:
            # keep every other point and sample half as often from now on
            self.points = deque(list(self.points)[::2])
            self.interval_s *= 2

    def to_list(self) -> list[dict]:
        return list(self.points)
