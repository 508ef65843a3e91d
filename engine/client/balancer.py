"""Choosing a server: least outstanding requests, with prefix-aware stickiness.

A request with a routing key goes to the key's "home" server, chosen by rendezvous
(highest-random-weight) hashing over the servers in rotation, so the samples and stages
that share a prompt prefix hit the same radix cache, and only the keys of a server that
leaves rotation move. The home is skipped while it is overloaded: more outstanding work
than `sticky_factor` x the least loaded server plus `sticky_slack`.
"""
from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

_MASK = (1 << 64) - 1


def routing_key(text: str, chars: int = 256) -> int:
    """Default routing key: a hash of the first `chars` characters."""
    return zlib.crc32(text[:chars].encode("utf-8", "surrogatepass"))


def messages_routing_key(messages: Sequence[dict], chars: int = 256) -> int:
    parts: list[str] = []
    size = 0
    for m in messages:
        content = m.get("content")
        piece = f"{m.get('role', '')}\x1f{content if isinstance(content, str) else content!r}\x1e"
        parts.append(piece)
        size += len(piece)
        if size >= chars:
            break
    return routing_key("".join(parts), chars)


def _weight(key: int, server_hash: int) -> int:
    # splitmix64 finaliser over the pair: cheap and well mixed
    z = ((key << 32) ^ server_hash) * 0x9E3779B97F4A7C15 & _MASK
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
    return z ^ (z >> 31)


@dataclass(eq=False)
class Server:
    url: str
    outstanding: int = 0
    healthy: bool = True
    consecutive_failures: int = 0
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    retries: int = 0                     # attempts sent here that retried an earlier one
    errors: Counter = field(default_factory=Counter)   # failed attempts here, by kind
    probing: bool = False
    hash: int = field(init=False)

    def __post_init__(self) -> None:
        self.hash = zlib.crc32(self.url.encode())

    def snapshot(self) -> dict:
        return {"outstanding": self.outstanding, "healthy": self.healthy,
                "attempts": self.attempts, "successes": self.successes,
                "failures": self.failures, "consecutive_failures": self.consecutive_failures,
                "retries": self.retries, "errors": dict(self.errors)}


class Balancer:
    def __init__(self, urls: Sequence[str], *, sticky_factor: float = 2.0,
                 sticky_slack: int = 4, fail_threshold: int = 3,
                 rng: random.Random | None = None) -> None:
        if not urls:
            raise ValueError("at least one server URL is needed")
        self.servers = [Server(u.rstrip("/")) for u in urls]
        self.sticky_factor = sticky_factor
        self.sticky_slack = sticky_slack
        self.fail_threshold = fail_threshold
        self._rng = rng or random.Random()

    def pick(self, key: int | None = None, avoid: Server | None = None) -> Server:
        servers = self.servers
        if len(servers) == 1:
            return servers[0]
        pool = [s for s in servers if s.healthy and s is not avoid]
        if not pool:
            pool = [s for s in servers if s.healthy] or list(servers)  # panic: try them all
        least = self._least_loaded(pool)
        if key is None:
            return least
        home = max(pool, key=lambda s: _weight(key, s.hash))
        if home.outstanding <= self.sticky_factor * least.outstanding + self.sticky_slack:
            return home
        return least

    def _least_loaded(self, pool: list[Server]) -> Server:
        best = pool[0]
        ties = 1
        for s in pool[1:]:
            if s.outstanding < best.outstanding:
                best, ties = s, 1
            elif s.outstanding == best.outstanding:
                ties += 1  # reservoir sampling: a fair pick among equals
                if self._rng.random() * ties < 1.0:
                    best = s
        return best

    def record_success(self, server: Server) -> None:
        server.successes += 1
        server.consecutive_failures = 0
        server.healthy = True

    def record_failure(self, server: Server) -> bool:
        """Count a server-side failure; True when this takes the server out of rotation."""
        server.failures += 1
        server.consecutive_failures += 1
        if server.healthy and server.consecutive_failures >= self.fail_threshold:
            server.healthy = False
            return True
        return False
