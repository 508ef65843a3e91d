"""The unit of the pipeline: a Stage turns one input item into zero or more output items.

Stages are small and composable (like datatrove's pipeline steps): they do not know about
queues, concurrency or shutdown; `engine.runner.StreamRunner` streams items through a chain
of stages with bounded concurrency, so every item moves on the moment it is ready.
A stage reports why it dropped something with `ctx.funnel.drop(stage, reason)`; the runner
counts items in and items out itself.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Sequence, TypeVar

from engine.llm import LLM
from sandbox_pool import Outcome

In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)


class Executor(Protocol):
    """What stages need from the sandbox pool (sandbox_pool.SandboxPool satisfies it).

    One Outcome per input of each (code, inputs) job, in job order. `urgent` jobs go before
    queued ones that are not: stages whose results unlock more LLM work ask for it.
    `more_coming`: more jobs of the same codes will follow soon (the pool may hold these a
    moment so that they share one fork)."""

    async def evaluate_many(self, jobs: Sequence[tuple[str, Sequence[Any]]], *,
                            urgent: bool = False, more_coming: bool = False) -> list[Sequence[Outcome]]: ...


class Funnel:
    """Per-stage in / kept / dropped-by-reason counts. Cheap, thread-safe, JSON-able."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inputs: Counter[str] = Counter()
        self.kept: Counter[str] = Counter()      # inputs that produced at least one output
        self.out: Counter[str] = Counter()       # outputs (a fan-out stage emits more than it keeps)
        self.dropped: dict[str, Counter[str]] = {}
        self.order: list[str] = []

    def _see(self, stage: str) -> None:
        if stage not in self.dropped:
            self.dropped[stage] = Counter()
            self.order.append(stage)

    def count_in(self, stage: str, n: int = 1) -> None:
        with self._lock:
            self._see(stage)
            self.inputs[stage] += n

    def count_kept(self, stage: str, n: int = 1) -> None:
        with self._lock:
            self._see(stage)
            self.kept[stage] += n

    def count_out(self, stage: str, n: int = 1) -> None:
        with self._lock:
            self._see(stage)
            self.out[stage] += n

    def drop(self, stage: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self._see(stage)
            self.dropped[stage][reason] += n

    def to_dict(self) -> dict[str, dict]:
        with self._lock:
            return {
                s: {"in": self.inputs[s], "kept": self.kept[s], "out": self.out[s],
                    "dropped": dict(self.dropped[s].most_common())}
                for s in self.order
            }

    def truncation(self) -> dict[str, float]:
        """Per row that counts a `truncated` reason: the share of its items cut off at max tokens."""
        return {row: round(v["dropped"]["truncated"] / v["in"], 4)
                for row, v in self.to_dict().items() if v["dropped"].get("truncated") and v["in"]}

    def merge(self, other: dict[str, dict]) -> None:
        """Add another funnel's to_dict() (a resumed run or another shard)."""
        for stage, row in other.items():
            self.count_in(stage, row.get("in", 0))
            self.count_kept(stage, row.get("kept", 0))
            self.count_out(stage, row.get("out", 0))
            for reason, n in row.get("dropped", {}).items():
                self.drop(stage, reason, n)

    def format(self) -> str:
        lines = [f"{'stage':<24}{'in':>8}{'kept':>8}{'out':>8}  dropped"]
        for stage, row in self.to_dict().items():
            why = ", ".join(f"{r}={n}" for r, n in row["dropped"].items()) or "-"
            lines.append(f"{stage:<24}{row['in']:>8}{row['kept']:>8}{row['out']:>8}  {why}")
        return "\n".join(lines)


@dataclass
class Context:
    """What stages share at run time (their settings come through their constructors). Built once per run.

    `llm`: the run's LLM; `roles`: the LLM of each role (engine.roles) that has its own server
    or model. Stages ask `llm_for(role)`."""

    llm: LLM
    executor: Executor
    funnel: Funnel = field(default_factory=Funnel)
    roles: dict[str, LLM] = field(default_factory=dict)
    # set by the runner's stop(): a stage item in flight sends no further LLM request (its
    # requests already sent finish and are cached), so one Ctrl-C ends within seconds
    stopping: bool = False

    def llm_for(self, role: str) -> LLM:
        return self.roles.get(role, self.llm)


class Stopped(Exception):
    """An LLM request refused because the run is stopping: the item is left for a rerun,
    neither kept nor dropped."""


class Stage(Protocol, Generic[In, Out]):
    name: str

    async def process(self, item: In, ctx: Context) -> list[Out]:  # type: ignore[misc]
        """Return the outputs for one input ([] when it is dropped; say why via ctx.funnel.drop)."""
        ...

    # Optional: `def start(self, ctx: Context) -> None`, called once by the runner before any
    # item, e.g. to send requests that every item will wait for ahead of the items' own.
    # Optional: `def hold(self, item: In) -> Any`, a sort key when the item must wait until the
    # stage's whole input has arrived (a rule over all items, not their arrival order), None to
    # take it at once. Held items are processed one at a time in key order once the input has
    # ended whole, and stay unstarted when it has not (stopped, or items lost upstream).
