"""Scoring completions against a run's verified instructions: the core every reward dialect uses.

A reward is the weighted pass rate of one completion over the instruction's kept functions
(weights come from the verifier audit: 1.0 unless down-weighted), or, in binary mode, 1.0
when that rate is MORE than the pass threshold (the rule the pipeline keeps responses by).

A completion may answer a composed prompt: its label is then a list of instruction ids. Each
constraint gets its own verdict (its weighted pass rate MORE than the threshold: the rule the
pipeline keeps responses by), and the reward combines them: the fraction met, or in "all"
mode 1.0 only when every one is (settings.combine, the GRPO files' reward_model.combine).

One batch request becomes one sandbox job per (function, instruction) with all of that
instruction's completions as inputs (a composed completion is an input of each of its
instructions' jobs), so a batch of 64 completions x 3 functions is 3 jobs.
Jobs never mix requests. A completion that makes a function hang or blow its memory ends
that job early; the inputs it took down with it are run again one per job, so its
neighbours still get their own verdicts.
"""
from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import orjson

from engine.records import VerifiedInstruction
from engine.stage import Executor
from engine.stages.backtranslate import BackTranslateStage
from engine.state import DB_NAME

REWARD_MODES = ("rate", "binary")
COMBINE_MODES = ("fraction", "all")
RERUN_STATUSES = frozenset({"timeout", "memory", "crashed"})   # a whole job can end on these


class RequestError(ValueError):
    """A bad request: the HTTP status, a one-line message, and `reason`, one of a few fixed
    words the service counts refusals by (REFUSAL_REASONS)."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status
        self.reason = reason or ("too_large" if status == 413 else "malformed")


# malformed: not JSON, a missing or mistyped field; too_large: over a size limit;
# unknown_instruction: an id the run does not have; unsplit_query: an OpenRLHF query the
# service cannot split into prompt and response; unauthorized: a missing or wrong API key
REFUSAL_REASONS = ("malformed", "too_large", "unknown_instruction", "unsplit_query", "unauthorized")


@dataclass(frozen=True, slots=True)
class RewardFunction:
    id: str
    code: str
    weight: float = 1.0
    flagged: bool = False


@dataclass(frozen=True, slots=True)
class RewardEntry:
    instruction_id: str
    text: str
    functions: tuple[RewardFunction, ...]


class RewardTable:
    """instruction id (the exports' provenance `instruction_id`) -> its kept functions."""

    def __init__(self, entries: Iterable[RewardEntry]) -> None:
        self.entries = {e.instruction_id: e for e in entries}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, instruction_id: str) -> RewardEntry | None:
        return self.entries.get(instruction_id)

    @classmethod
    def from_instructions(cls, instructions: Iterable[VerifiedInstruction]) -> RewardTable:
        """One entry per instruction id; records of the same instruction (a resumed run with
        other cases) contribute the union of their functions."""
        merged: dict[str, dict[str, RewardFunction]] = defaultdict(dict)
        texts: dict[str, str] = {}
        for vi in instructions:
            iid = vi.instruction.id
            texts.setdefault(iid, vi.instruction.text)
            flagged = {a.verifier_id for a in vi.audits if a.flagged}
            for f, _ in vi.functions:
                merged[iid].setdefault(f.id, RewardFunction(f.id, f.code, vi.weight(f.id), f.id in flagged))
        return cls(RewardEntry(iid, texts[iid], tuple(fs.values())) for iid, fs in merged.items())

    @classmethod
    def from_run(cls, run_dir: str | Path) -> RewardTable:
        """The verified instructions of a run directory, read without writing to it."""
        path = Path(run_dir) / DB_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no {DB_NAME}; run `autoif run --output-dir {run_dir}` first")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT data FROM records WHERE kind = ? AND stage = ?",
                              (VerifiedInstruction.__name__, BackTranslateStage.name)).fetchall()
        finally:
            db.close()
        return cls.from_instructions(VerifiedInstruction.from_dict(orjson.loads(r[0])) for r in rows)


@dataclass(frozen=True)
class RewardSettings:
    mode: str = "rate"                  # "rate": weighted pass rate; "binary": 1.0 above threshold
    threshold: float = 0.5
    max_batch: int = 1024               # completions per request
    max_chars: int = 262_144            # characters per completion
    combine: str = "fraction"           # a composed completion's reward: "fraction" met, or "all"
    max_constraints: int = 32           # instruction ids in one composed label

    def __post_init__(self) -> None:
        if self.mode not in REWARD_MODES:
            raise ValueError(f"reward mode must be one of {REWARD_MODES}, got {self.mode!r}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"reward combine must be one of {COMBINE_MODES}, got {self.combine!r}")


@dataclass(frozen=True, slots=True)
class FunctionVerdict:
    id: str
    passed: bool
    status: str                          # the sandbox outcome status ("ok", "timeout", ...)


@dataclass(frozen=True, slots=True)
class ConstraintVerdict:
    """One constraint of a composed completion: its instruction, its functions' weighted pass
    rate and whether that met it."""

    instruction_id: str
    passed: bool
    pass_rate: float

    def to_dict(self) -> dict:
        return {"instruction_id": self.instruction_id, "passed": self.passed, "pass_rate": self.pass_rate}


@dataclass(frozen=True, slots=True)
class Score:
    reward: float
    pass_rate: float                     # composed: the fraction of constraints met
    functions: tuple[FunctionVerdict, ...]
    constraints: tuple[ConstraintVerdict, ...] = ()     # composed only

    def to_dict(self) -> dict:
        d = {"reward": self.reward, "pass_rate": self.pass_rate,
             "functions": [{"id": f.id, "passed": f.passed, "status": f.status} for f in self.functions]}
        if self.constraints:
            d["constraints"] = [c.to_dict() for c in self.constraints]
        return d


def _passed(outcome: Any) -> bool:
    return getattr(outcome, "status", None) == "ok" and getattr(outcome, "value", None) is True


class Scorer:
    def __init__(self, table: RewardTable, executor: Executor, settings: RewardSettings | None = None) -> None:
        self.table, self.executor = table, executor
        self.settings = settings or RewardSettings()
        self.scored = 0                   # completions scored (for /health)

    def check(self, items: Sequence[tuple[Any, Any]]) -> None:
        """Raise RequestError for the first thing wrong with a batch of (instruction id, completion)."""
        s = self.settings
        if not items:
            raise RequestError(400, "empty batch: nothing to score")
        if len(items) > s.max_batch:
            raise RequestError(413, f"batch of {len(items)} completions; the limit is {s.max_batch}")
        for i, (label, text) in enumerate(items):
            ids = label if isinstance(label, list) else [label]
            if not ids or len(ids) > s.max_constraints:
                raise RequestError(400, f"item {i}: a list of 1 to {s.max_constraints} instruction ids, "
                                        f"got {len(ids)}")
            for iid in ids:
                if not isinstance(iid, str):
                    raise RequestError(400, f"item {i}: instruction id must be a string (or a list of "
                                            f"them), got {type(iid).__name__}")
            if not isinstance(text, str):
                raise RequestError(400, f"item {i}: completion must be a string, got {type(text).__name__}")
            if len(text) > s.max_chars:
                raise RequestError(413, f"item {i}: completion of {len(text)} characters; "
                                        f"the limit is {s.max_chars}")
            for iid in ids:
                if iid not in self.table.entries:
                    raise RequestError(400, f"item {i}: unknown instruction id {iid[:80]!r}", "unknown_instruction")

    async def score(self, items: Sequence[tuple[str | list[str], str]]) -> list[Score]:
        """Scores in item order; call check() first. A label that is a list is a composed prompt's
        constraints (a one-item list is scored as composed too: it asks for the per-constraint answer)."""
        # one unit per (item, constraint); a plain label is one unit
        units = [(i, iid, text) for i, (label, text) in enumerate(items)
                 for iid in (label if isinstance(label, list) else [label])]
        by_inst: dict[str, list[int]] = defaultdict(list)
        for u, (_, iid, _) in enumerate(units):
            by_inst[iid].append(u)
        jobs, owners = [], []               # owners[j] = (function, unit indices)
        for iid, idx in by_inst.items():
            entry = self.table.entries[iid]
            texts = [units[u][2] for u in idx]
            for f in entry.functions:
                jobs.append((f.code, texts))
                owners.append((f, idx))
        results = [list(r) for r in await self.executor.evaluate_many(jobs)]
        await self._rerun_alone(jobs, results)
        verdicts: list[list[FunctionVerdict]] = [[] for _ in units]
        weights: list[list[float]] = [[] for _ in units]
        for (f, idx), outcomes in zip(owners, results):
            for u, o in zip(idx, outcomes):
                verdicts[u].append(FunctionVerdict(f.id, _passed(o), getattr(o, "status", "missing")))
                weights[u].append(f.weight)
        self.scored += len(items)
        per_unit = [self._score(v, w) for v, w in zip(verdicts, weights)]
        grouped: list[list[int]] = [[] for _ in items]
        for u, (i, _, _) in enumerate(units):
            grouped[i].append(u)
        return [self._combine([units[u][1] for u in us], [per_unit[u] for u in us])
                if isinstance(items[i][0], list) else per_unit[us[0]] for i, us in enumerate(grouped)]

    def _combine(self, ids: list[str], scores: list[Score]) -> Score:
        """A composed completion's score from its constraints' own."""
        s = self.settings
        constraints = tuple(ConstraintVerdict(iid, sc.pass_rate > s.threshold, sc.pass_rate)
                            for iid, sc in zip(ids, scores))
        met = sum(c.passed for c in constraints) / len(constraints)
        reward = met if s.combine == "fraction" else float(met == 1.0)
        return Score(reward=reward, pass_rate=met, functions=tuple(f for sc in scores for f in sc.functions),
                     constraints=constraints)

    async def _rerun_alone(self, jobs: list, results: list[list]) -> None:
        """Inputs of a multi-input job that ended on a timeout, memory or crash: one job each."""
        again = [(j, k) for j, (outcomes, (_, texts)) in enumerate(zip(results, jobs)) if len(texts) > 1
                 for k, o in enumerate(outcomes) if getattr(o, "status", None) in RERUN_STATUSES]
        if not again:
            return
        singles = await self.executor.evaluate_many([(jobs[j][0], [jobs[j][1][k]]) for j, k in again])
        for (j, k), single in zip(again, singles):
            results[j][k] = single[0]

    def _score(self, verdicts: list[FunctionVerdict], weights: list[float]) -> Score:
        total = sum(weights)
        rate = sum(w for v, w in zip(verdicts, weights) if v.passed) / total if total > 0 else 0.0
        s = self.settings
        reward = rate if s.mode == "rate" else float(rate > s.threshold)
        return Score(reward=reward, pass_rate=rate, functions=tuple(verdicts))


def table_summary(table: RewardTable) -> Mapping[str, Any]:
    fs = [f for e in table.entries.values() for f in e.functions]
    return {"instructions": len(table), "functions": len(fs), "flagged": sum(f.flagged for f in fs)}
