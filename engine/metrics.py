"""Run metrics: Prometheus counters/histograms per stage, a bounded time series, a JSON summary.

Exposition is prometheus-client's (not hand-written); each run has its own registry so
several runs in one process (tests, benchmarks) never share counters.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

log = logging.getLogger("autoif.metrics")

# Seconds buckets for one item's trip through one stage (LLM calls dominate).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))


class RunMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Counter("autoif_stage_items", "Items per stage and outcome",
                             ["stage", "outcome"], registry=self.registry)
        self.latency = Histogram("autoif_stage_seconds", "Time one item spends in a stage",
                                 ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._server = None
        self._live: LiveCollector | None = None
        self.attach(LiveCollector())        # zeros until a run attaches its own readers

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    async def linger(self, seconds: float) -> None:
        """Keep serving the final values for `seconds` (< 0: until interrupted), so a scraper
        that comes by after the run still sees them; Ctrl-C ends it early."""
        if self._server is None or seconds == 0:
            return
        log.info("run finished; serving its final metrics %s (Ctrl-C to stop)",
                 "until interrupted" if seconds < 0 else f"for {seconds:g} s")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), None if seconds < 0 else seconds)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)

    def attach(self, collector: LiveCollector) -> None:
        """The run's live view; a later run of the same job (an online-DPO round) replaces it."""
        if self._live is not None:
            self.registry.unregister(self._live)
        self.registry.register(collector)
        self._live = collector

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()     # release the port, not only the serving thread
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


def _histogram(name: str, text: str, buckets: list[tuple[str, int]], total: float) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts (upper bounds as strings, the last "+Inf")."""
    cumulative, running = [], 0
    for le, n in buckets:
        running += n
        cumulative.append((le, float(running)))
    return HistogramMetricFamily(name, text, buckets=cumulative, sum_value=float(total))


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


class LiveCollector:
    """Run-wide metrics read at scrape time, besides the per-stage counters above; Prometheus
    conventions: counters for counts (`_total`), histograms for distributions, labels rather
    than one name per stage or server.

    - autoif_llm_requests_in_flight (gauge), autoif_llm_requests_total,
      autoif_llm_completion_tokens_total, autoif_pool_checks_total;
    - autoif_llm_request_seconds (histogram): call to answer of each request, retries included;
    - autoif_llm_retries_total{server}, autoif_llm_attempt_errors_total{server,kind} and
      autoif_llm_request_failures_total{kind} (requests that ran out of retries);
    - autoif_llm_requests_per_second, autoif_llm_tokens_per_second, autoif_pool_checks_per_second,
      autoif_pool_busy_fraction: the latest fixed-interval sample of the run's TimeSeries;
    - autoif_queue_depth{stage}: items waiting for each stage;
    - autoif_funnel_items_total{stage,kind=in|kept|out} and autoif_funnel_dropped_total{stage,reason}:
      the funnel, sub-item rows ("verifiers.answer", ...) and drop reasons included;
    - autoif_response_pass_rate / autoif_response_score (histograms) of every graded response.

    Each reader is a callable, so the same collector serves a single-node run (reading the
    client, pool and runner) and a Ray driver (reading what the shards last streamed back).
    """

    def __init__(self, *, stats=None, point=None, queues=None, funnel=None, distributions=None) -> None:
        self.stats = stats                  # () -> client stats + {"checks"} (see engine.run.Engine.counters)
        self.point = point                  # () -> latest time-series point (or {})
        self.queues = queues                # () -> {stage: depth}
        self.funnel = funnel                # () -> Funnel.to_dict()
        self.distributions = distributions  # () -> Distributions.to_dict()

    def describe(self):
        return []                           # collected on scrape only (values change all the time)

    def collect(self):
        st = self.stats() if self.stats else {}
        g = GaugeMetricFamily("autoif_llm_requests_in_flight", "LLM requests sent and not yet answered")
        g.add_metric([], float(st.get("in_flight", 0)))
        yield g
        for name, key, text in (("autoif_llm_requests", "requests", "LLM requests issued"),
                                ("autoif_llm_completion_tokens", "completion_tokens", "completion tokens received"),
                                ("autoif_pool_checks", "checks", "verifier calls run by the sandbox pool")):
            c = CounterMetricFamily(name, text)
            c.add_metric([], float(st.get(key, 0)))
            yield c
        latency = st.get("latency") or {}
        if latency.get("buckets"):
            yield _histogram("autoif_llm_request_seconds",
                             "seconds from call to answer of an LLM request, retries included",
                             list(latency["buckets"].items()), latency.get("sum", 0.0))
        retries = CounterMetricFamily("autoif_llm_retries", "attempts that retried a failed one, by server",
                                      labels=["server"])
        errors = CounterMetricFamily("autoif_llm_attempt_errors", "failed LLM attempts by server and kind",
                                     labels=["server", "kind"])
        for url, server in (st.get("servers") or {}).items():
            retries.add_metric([url], float(server.get("retries", 0)))
            for kind, n in (server.get("errors") or {}).items():
                errors.add_metric([url, kind], float(n))
        yield retries
        yield errors
        failures = CounterMetricFamily("autoif_llm_request_failures",
                                       "LLM requests that failed after their retries, by kind", labels=["kind"])
        for kind, n in (st.get("failures") or {}).items():
            failures.add_metric([kind], float(n))
        yield failures
        p = self.point() if self.point else {}
        for name, key, text in (
                ("autoif_llm_requests_per_second", "req_s", "LLM requests answered per second (last sample)"),
                ("autoif_llm_tokens_per_second", "tok_s", "completion tokens per second (last sample)"),
                ("autoif_pool_checks_per_second", "chk_s", "sandbox verifier calls per second (last sample)"),
                ("autoif_pool_busy_fraction", "pool_busy", "share of sandbox worker time spent busy (last sample)")):
            g = GaugeMetricFamily(name, text)
            g.add_metric([], float(p.get(key, 0.0) or 0.0))
            yield g
        q = GaugeMetricFamily("autoif_queue_depth", "items waiting for a stage", labels=["stage"])
        for stage, depth in (self.queues() if self.queues else {}).items():
            q.add_metric([stage], float(depth))
        yield q
        items = CounterMetricFamily("autoif_funnel_items", "funnel counts per stage (in, kept, out)",
                                    labels=["stage", "kind"])
        dropped = CounterMetricFamily("autoif_funnel_dropped", "funnel drops per stage and reason",
                                      labels=["stage", "reason"])
        for stage, row in (self.funnel() if self.funnel else {}).items():
            for kind in ("in", "kept", "out"):
                items.add_metric([stage, kind], float(row.get(kind, 0)))
            for reason, n in row.get("dropped", {}).items():
                dropped.add_metric([stage, reason], float(n))
        yield items
        yield dropped
        d = self.distributions() if self.distributions else None
        if d:
            pr = d["pass_rate"]
            yield _histogram("autoif_response_pass_rate", "pass rate of every graded response",
                             [(f"{le:g}", n) for le, n in zip(pr["le"], pr["counts"])] + [("+Inf", 0)],
                             pr.get("sum", 0.0))
            sc = d["score"]
            yield _histogram("autoif_response_score", "judge score of every scored response (0: unreadable)",
                             [(str(v), n) for v, n in zip(sc["values"], sc["counts"])] + [("+Inf", 0)],
                             sc.get("sum", 0))
