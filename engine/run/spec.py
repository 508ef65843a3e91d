"""RunSpec: what one run of stages is, whichever way it runs (`autoif run`, a Ray shard,
`autoif stage`, an online-DPO round, a benchmark)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from engine.config import Config
from engine.records import Instruction, Query
from engine.stages import CHAIN


@dataclass(frozen=True)
class RunSpec:
    """`stages`: names from engine.stages.CHAIN, in order; `seeds`: the instructions augment
    indexes; `queries`: the query pool (None: read from config.run.queries_path); `run_dir`: where
    the run's logs and servers live; `progress`: the live progress line on stderr; `started`: when
    and how the job was started (engine.run.run_start), written into its summary."""

    config: Config
    run_dir: Path
    stages: tuple[str, ...] = CHAIN
    seeds: Sequence[Instruction] = ()
    queries: Sequence[Query] | None = None
    progress: bool = False
    started: Mapping[str, str] = field(default_factory=dict)   # run_start(): when and how, for the summary
