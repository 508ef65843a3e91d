"""The pool's settings: one frozen object for everything a SandboxPool is built with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .limits import Limits


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How many workers, how jobs reach them, and the Limits every job runs under."""

    workers: int | None = None  # None: one per CPU core
    limits: Limits = field(default_factory=Limits)
    # Every job resolves within timeout_s + grace_s of reaching its worker, whatever happens.
    grace_s: float = 2.0
    pipeline_depth: int = 2  # wires in flight per worker
    # Queued jobs of the same code are sent as one job of up to this many inputs: one fork
    # instead of many (the pipeline sends one small job per function per query).
    coalesce_max_inputs: int = 256
    # A job whose caller said more of its code is coming (`more_coming`: the responses stage,
    # while other queries of the same instruction are still generating) waits up to this long
    # after it was queued for them to share its fork, unless its code already has the cap
    # queued or a queued job of its code was sent without the hint (the last of them).
    coalesce_window_s: float = 0.0
    scratch_root: str | None = None  # where the pool's scratch dir is made (None: the temp dir)
    start_method: str = "forkserver"
    start_timeout_s: float = 60.0

    @property
    def n_workers(self) -> int:
        return max(1, self.workers if self.workers is not None else (os.cpu_count() or 1))
