"""Query join: each verified instruction meets N user queries (the fan-out before responses).

Queries come from a JSONL file: {"query": ...} lines or ShareGPT lines
({"conversations": [{"from": "human", "value": ...}, ...]}, the first human turn), or the
built-in set. Which N queries an instruction gets is a function of the instruction id and
the run seed, so a resumed run picks the same ones. A QueryBudget can cap the run's total,
granted in instruction-id order once every instruction is verified.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from engine.config import Config
from engine.jsonl import read_texts
from engine.prompting import packaged_file, render
from engine.records import ComposedInstruction, Query, QueryTask, VerifiedInstruction, join_constraints
from engine.stage import Context


def query_text(row: Any) -> str | None:
    """The user request in one JSONL row, whatever common format it uses."""
    if not isinstance(row, dict):
        return None
    for key in ("query", "prompt", "instruction"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key].strip()
    for key, speaker, text in (("conversations", "from", "value"), ("messages", "role", "content")):
        turns = row.get(key)
        if isinstance(turns, list):
            for turn in turns:
                if (isinstance(turn, dict) and turn.get(speaker) in ("human", "user")
                        and isinstance(turn.get(text), str) and turn[text].strip()):
                    return turn[text].strip()
    return None


def load_queries(path: str | Path | None = None, on_error: Callable[[str], None] | None = None) -> list[Query]:
    """Distinct queries of a file (default: the built-in set). A bad line raises ValueError
    naming file and line, unless `on_error` takes the message and loading goes on."""
    path = Path(path) if path else packaged_file("queries.jsonl")
    seen: set[str] = set()
    queries: list[Query] = []
    for text in read_texts(path, query_text,
                           "no query (expected 'query' or ShareGPT 'conversations')", on_error):
        if text not in seen:
            seen.add(text)
            queries.append(Query(text=text))
    return queries


def run_queries(cfg: Config, queries: Sequence[Query] | None = None) -> list[Query]:
    """`queries`, or when None the run's query pool: the queries_path file, or the built-in set."""
    return list(queries) if queries is not None else load_queries(cfg.run.queries_path or None)


class QueryBudget:
    """How many queries each instruction gets under a cap on the run's total (0: no cap).

    A run's cost grows with the instructions that survive cross-validation, which nobody knows
    beforehand; the cap bounds it. The grant rule does not depend on timing: under a cap the
    queries stage holds every instruction until all of them are verified (QueryJoinStage.hold),
    then grants in instruction-id order, each its full want while the cap lasts, the one that
    reaches the cap the rest, later ones none. One that already holds a grant (a resumed run
    passes the stored `grants`) gets the same number again and does not wait, so a rerun joins
    the same tasks and never exceeds the cap. `on_grant` is given all grants after each new one
    (to store them).
    """

    def __init__(self, total: int = 0, grants: Mapping[str, int] | None = None,
                 on_grant: Callable[[dict[str, int]], None] | None = None) -> None:
        self.total = total
        self.grants: dict[str, int] = dict(grants or {})
        self.on_grant = on_grant

    def granted(self, key: str) -> bool:
        """Whether this key's share is already decided (uncapped: always)."""
        return not self.total or key in self.grants

    def take(self, instruction_id: str, want: int, share: float = 1.0, bucket: int = 1) -> int:
        """`share` < 1: prompts of this `bucket` (constraint count, config.compose_mix) take at most
        that share of the cap; their keys say their bucket ("3:<id>"), a plain id is bucket 1."""
        if instruction_id in self.grants:
            return self.grants[instruction_id]
        left = self.total - sum(self.grants.values())
        if self.total and share < 1:
            used = sum(n for k, n in self.grants.items() if _bucket(k) == bucket)
            left = min(left, int(self.total * share) - used)
        n = want if not self.total else max(0, min(want, left))
        if self.total:                  # an uncapped run has nothing to remember
            self.grants[instruction_id] = n
            if self.on_grant is not None:
                self.on_grant(dict(self.grants))
        return n


def _bucket(key: str) -> int:
    return int(key.split(":", 1)[0]) if ":" in key else 1


class QueryJoinStage:
    """VerifiedInstruction -> N QueryTasks: `per_instruction` of `queries`, picked by the
    instruction id and the run's `seed`; fewer once `budget` runs low, none (the instruction
    counted as dropped for `query_budget`) once it has run out. A ComposedInstruction (the
    compose stage) is joined the same way, by its own id, its constraints one per line."""

    name = "queries"

    @classmethod
    def from_config(cls, cfg: Config, queries: Sequence[Query] | None = None,
                    budget: QueryBudget | None = None) -> QueryJoinStage:
        """`budget`: the grants of max_queries so far (a resumed run's, from its store; None: a
        fresh one)."""
        return cls(run_queries(cfg, queries), per_instruction=cfg.responses.queries_per_instruction,
                   seed=cfg.run.seed, budget=budget or QueryBudget(cfg.responses.max_queries),
                   shares=cfg.compose.shares if cfg.compose.enabled else ())

    def __init__(self, queries: Sequence[Query], *, per_instruction: int, seed: int,
                 budget: QueryBudget | None = None, shares: Sequence[float] = ()) -> None:
        """`shares`: a composing run's compose_mix; under a query cap, prompts of each constraint
        count take their share of it (else the one-constraint prompts, verified first, take all)."""
        self.queries = list(queries)
        self.per_instruction = per_instruction
        self.seed = seed
        self.budget = budget or QueryBudget()
        self.shares = tuple(shares)

    def _key(self, item: VerifiedInstruction | ComposedInstruction) -> str:
        """The budget key of an item: its instruction id, or "<bucket>:<id>" for a composed prompt."""
        if isinstance(item, ComposedInstruction):
            return f"{min(len(item.members), len(self.shares) or 1)}:{item.id}"
        return item.instruction.id

    def hold(self, item: VerifiedInstruction | ComposedInstruction) -> tuple[str, str] | None:
        """Under a cap, an item without a grant waits for every verdict (the runner's barrier)
        and is granted in key order; uncapped, nothing waits."""
        key = self._key(item)
        return None if self.budget.granted(key) else (key, item.id)

    async def process(self, item: VerifiedInstruction | ComposedInstruction, ctx: Context) -> list[QueryTask]:
        pool = self.queries
        if not pool:
            ctx.funnel.drop(self.name, "no_queries")
            return []
        members = item.members if isinstance(item, ComposedInstruction) else (item,)
        bucket = min(len(members), len(self.shares) or 1)
        key = self._key(item)
        want = min(self.per_instruction, len(pool))
        share = self.shares[bucket - 1] / sum(self.shares) if self.shares else 1.0
        n = self.budget.take(key, want, share, bucket)
        if not n:
            ctx.funnel.drop(self.name, "query_budget")
            return []
        rng = random.Random(f"{self.seed}:{item.id if isinstance(item, ComposedInstruction) else key}")
        chosen = rng.sample(pool, want)[:n]     # a cut grant keeps the first of the same picks
        text = join_constraints([m.instruction.text for m in members])
        return [QueryTask(instruction=members[0], also=tuple(members[1:]), query_id=q.id, query=q.text,
                          prompt=render("response", query=q.text, instruction=text))
                for q in chosen]
