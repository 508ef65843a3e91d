"""Retry policy: capped exponential backoff with full jitter."""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` HTTP tries per logical request; before try k+1 sleep U(0, min(cap, base*2**k)).

    Full jitter spreads the retries of many requests that failed together (a server that
    restarted) instead of having them return in lockstep.
    """

    attempts: int = 6
    base: float = 0.25
    cap: float = 8.0

    def backoff(self, failed_attempts: int, rng: random.Random | None = None,
                retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** max(0, failed_attempts - 1)))
        delay = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None:  # the server asked for a pause: honour it, within the cap
            delay = max(delay, min(retry_after, self.cap))
        return delay
