"""Where a run's records go as the stages make them.

A Recorder is told of each augmented instruction, each verified one (as the audit leaves it),
each graded prompt's result and each final result. A single-node run and a Ray shard store them in
their run directory (`Stored`); a shard also streams them to the driver (`Streamed`); an
online-DPO round stores only its results, under its round (`RoundStored`); `autoif stage`
stores nothing (None).
"""
from __future__ import annotations

from typing import Any, Protocol

from engine.config import Config
from engine.records import ConflictPair, Instruction, QueryResult, SampledPrompt, VerifiedInstruction
from engine.run.events import EventQueue, Results, Verified
from engine.run.store import RunStore
from engine.stage import Context, Stage
from engine.stages import ComposedGroups, QueryBudget


class Recorder(Protocol):
    def augmented(self, records: list[Instruction]) -> None: ...

    def verified(self, records: list[VerifiedInstruction]) -> None: ...

    def graded(self, result: QueryResult) -> None:
        """Every graded prompt's result, kept or not."""

    def result(self, record: QueryResult) -> None: ...

    def conflict(self, pair: ConflictPair) -> None:
        """Each pair of verified instructions the compose stage found conflicting."""

    def compose_groups(self) -> ComposedGroups: ...

    def query_budget(self, cfg: Config) -> QueryBudget: ...


class Stored:
    """Every record in the run directory's store, under its content id: a rerun adds nothing twice."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def augmented(self, records: list[Instruction]) -> None:
        self.store.put_augmented(records)

    def verified(self, records: list[VerifiedInstruction]) -> None:
        self.store.put_verified(records)

    def graded(self, result: QueryResult) -> None:
        self.store.put_sampled([SampledPrompt.of(result)])

    def result(self, record: QueryResult) -> None:
        self.store.put_results([record])

    def conflict(self, pair: ConflictPair) -> None:
        self.store.put_conflicts([pair])

    def compose_groups(self) -> ComposedGroups:
        """The groups this run directory composed, kept in its store as they are made (a record:
        composition in id order makes the same groups again on a rerun)."""
        def keep(groups: list) -> None:
            self.store.compose_groups = groups
        return ComposedGroups(self.store.compose_groups, on_change=keep)

    def query_budget(self, cfg: Config) -> QueryBudget:
        """config.responses.max_queries with the grants this run directory already made, kept in its store
        as they are made: a rerun gives each instruction the same queries, and no more in all."""
        def keep(grants: dict) -> None:
            self.store.query_grants = grants
        return QueryBudget(cfg.responses.max_queries, self.store.query_grants, on_grant=keep)


class Streamed(Stored):
    """Stored, and streamed to the Ray driver as typed events."""

    def __init__(self, store: RunStore, events: EventQueue) -> None:
        super().__init__(store)
        self.events = events

    def verified(self, records: list[VerifiedInstruction]) -> None:
        super().verified(records)
        self.events.put(Verified([r.to_dict() for r in records]))

    def result(self, record: QueryResult) -> None:
        super().result(record)
        self.events.put(Results([record.to_dict()]))


class Unrecorded:
    """Records nothing, and starts from no grants and no groups: a recorder that keeps one kind
    of record overrides only that one."""

    def augmented(self, records: list[Instruction]) -> None:
        pass

    def verified(self, records: list[VerifiedInstruction]) -> None:
        pass

    def graded(self, result: QueryResult) -> None:
        pass

    def result(self, record: QueryResult) -> None:
        pass

    def conflict(self, pair: ConflictPair) -> None:
        pass

    def compose_groups(self) -> ComposedGroups:
        return ComposedGroups()

    def query_budget(self, cfg: Config) -> QueryBudget:
        return QueryBudget(cfg.responses.max_queries)


class RoundStored(Unrecorded):
    """An online-DPO round: its results under the round, nothing else (the full run's verified
    instructions and GRPO prompts stay as they are)."""

    def __init__(self, store: RunStore, round_: int) -> None:
        self.store, self.round = store, round_

    def result(self, record: QueryResult) -> None:
        self.store.put_round_results(self.round, [record])


class Recorded:
    """Wraps a stage; its outputs go to `put` as they are made."""

    def __init__(self, stage: Stage, put: Any) -> None:
        self.inner, self.put, self.name = stage, put, stage.name
        if hasattr(stage, "hold"):        # the runner's barrier sees through the wrapper
            self.hold = stage.hold

    async def process(self, item: Any, ctx: Context) -> list:
        outs = await self.inner.process(item, ctx)
        if outs:
            self.put(list(outs))
        return outs
