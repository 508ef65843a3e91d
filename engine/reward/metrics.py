"""What the reward service answered and refused, for GET /health and GET /metrics (Prometheus).

A trainer may treat a refused request as a missing reward and carry on (OpenRLHF retries,
logs at info level and leaves the reward empty), so refusals are counted by route and reason
(scorer.REFUSAL_REASONS) where a dashboard or a health check sees them:

- autoif_reward_requests_total{route,status}: scoring requests answered, by HTTP status;
- autoif_reward_refusals_total{route,reason}: requests refused with a 4xx, by reason;
- autoif_reward_completions_scored_total: completions scored.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily

from engine.reward.scorer import REFUSAL_REASONS


class ServiceMetrics:
    def __init__(self, routes: Iterable[str], scored: Callable[[], int]) -> None:
        self.routes = tuple(routes)
        self.scored = scored                  # () -> completions scored so far
        self.answered: Counter[tuple[str, int]] = Counter()
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def count(self, route: str, status: int, reason: str | None = None) -> None:
        self.answered[route, status] += 1
        if reason is not None:
            self.refusals[route, reason] += 1

    def refused(self) -> dict[str, int]:
        """Refusals by reason, every reason named (0 where none), over all routes."""
        totals = dict.fromkeys(REFUSAL_REASONS, 0)
        for (_, reason), n in self.refusals.items():
            totals[reason] = totals.get(reason, 0) + n
        return totals

    def describe(self):
        return []                             # collected on scrape only

    def collect(self):
        requests = CounterMetricFamily("autoif_reward_requests", "scoring requests answered, by route "
                                       "and HTTP status", labels=["route", "status"])
        for (route, status), n in sorted(self.answered.items()):
            requests.add_metric([route, str(status)], float(n))
        yield requests
        refusals = CounterMetricFamily("autoif_reward_refusals", "scoring requests refused with a 4xx, "
                                       "by route and reason", labels=["route", "reason"])
        for route in self.routes:             # every series from the start, so rate() sees the first
            for reason in REFUSAL_REASONS:
                refusals.add_metric([route, reason], float(self.refusals[route, reason]))
        yield refusals
        scored = CounterMetricFamily("autoif_reward_completions_scored", "completions scored")
        scored.add_metric([], float(self.scored()))
        yield scored

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
