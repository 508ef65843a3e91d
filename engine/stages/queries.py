"""Query join: each verified instruction meets N user queries (the fan-out before responses).

Queries come from a JSONL file: {"query": ...} lines or ShareGPT lines
({"conversations": [{"from": "human", "value": ...}, ...]}, the first human turn), or the
built-in set. Which N queries an instruction gets is a function of the instruction id and
the run seed, so a resumed run picks the same ones.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.jsonl import read_texts
from engine.prompting import packaged_file, render
from engine.records import Query, QueryTask, VerifiedInstruction
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


class QueryJoinStage:
    """VerifiedInstruction -> N QueryTasks: `per_instruction` of `queries`, picked by the
    instruction id and the run's `seed`."""

    name = "queries"

    def __init__(self, queries: Sequence[Query], *, per_instruction: int, seed: int) -> None:
        self.queries = list(queries)
        self.per_instruction = per_instruction
        self.seed = seed

    async def process(self, item: VerifiedInstruction, ctx: Context) -> list[QueryTask]:
        pool = self.queries
        if not pool:
            ctx.funnel.drop(self.name, "no_queries")
            return []
        rng = random.Random(f"{self.seed}:{item.instruction.id}")
        chosen = rng.sample(pool, min(self.per_instruction, len(pool)))
        return [QueryTask(instruction=item, query_id=q.id, query=q.text,
                          prompt=render("response", query=q.text, instruction=item.instruction.text))
                for q in chosen]
