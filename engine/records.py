"""The typed records that flow between pipeline stages.

Every record has a deterministic `id` derived from its content, so a resumed run that
recomputes a record gets the same id and `INSERT OR IGNORE` never stores it twice.
`to_dict()` returns plain JSON types (orjson-friendly); `from_dict()` inverts it.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import orjson


def content_id(*parts: Any) -> str:
    """A short stable hash of JSON-serializable parts (16 hex digits)."""
    blob = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:16]


def normalize_instruction(text: str) -> str:
    """What makes two instruction texts "the same" for ids: case and spacing do not count."""
    return " ".join(text.split()).lower()


@dataclass(frozen=True, slots=True)
class Instruction:
    text: str
    source: str = "seed"                 # "seed" | "augment" | "input"
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id("instruction", normalize_instruction(self.text)))

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping) -> Instruction:
        return cls(text=d["text"], source=d.get("source", "seed"), id=d.get("id", ""))


@dataclass(frozen=True, slots=True)
class SeedBatch:
    """One self-instruct prompt: the seeds shown to the LLM, plus seeds to emit unchanged.

    Each seed is in exactly one batch's `passthrough`, so seeds reach the output once.
    """

    index: int
    shown: tuple[Instruction, ...]
    passthrough: tuple[Instruction, ...] = ()

    @property
    def id(self) -> str:
        return content_id("seedbatch", self.index, [s.id for s in self.shown],
                          [s.id for s in self.passthrough])

    def to_dict(self) -> dict:
        return {"id": self.id, "index": self.index,
                "shown": [s.to_dict() for s in self.shown],
                "passthrough": [s.to_dict() for s in self.passthrough]}

    @classmethod
    def from_dict(cls, d: Mapping) -> SeedBatch:
        return cls(index=d["index"], shown=tuple(Instruction.from_dict(s) for s in d["shown"]),
                   passthrough=tuple(Instruction.from_dict(s) for s in d.get("passthrough", ())))


@dataclass(frozen=True, slots=True)
class Verifier:
    """A Python verification function (`def evaluate(response) -> bool`)."""

    code: str
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id("verifier", self.code))

    def to_dict(self) -> dict:
        return {"id": self.id, "code": self.code}

    @classmethod
    def from_dict(cls, d: Mapping) -> Verifier:
        return cls(code=d["code"], id=d.get("id", ""))


@dataclass(frozen=True, slots=True)
class Case:
    """A test case: a candidate response and whether it should satisfy the instruction.

    `pair`: the tag both sides of a minimal pair share (engine.stages.pairs): two cases that
    differ only in what the constraint is about; empty for a case in no pair. Not part of the
    id: the same text with the same verdict is the same case."""

    input: str
    expected: bool
    pair: str = ""

    @property
    def id(self) -> str:
        return content_id("case", self.input, self.expected)

    def to_dict(self) -> dict:
        d = {"input": self.input, "expected": self.expected}
        if self.pair:
            d["pair"] = self.pair
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Case:
        return cls(input=d["input"], expected=bool(d["expected"]), pair=d.get("pair", ""))


@dataclass(frozen=True, slots=True)
class VerifierDraft:
    """An instruction with the (unvalidated) functions and cases the LLM proposed for it."""

    instruction: Instruction
    functions: tuple[Verifier, ...]
    cases: tuple[Case, ...]

    @property
    def id(self) -> str:
        return content_id("draft", self.instruction.id, [f.id for f in self.functions],
                          [c.id for c in self.cases])

    def to_dict(self) -> dict:
        return {"id": self.id, "instruction": self.instruction.to_dict(),
                "functions": [f.to_dict() for f in self.functions],
                "cases": [c.to_dict() for c in self.cases]}

    @classmethod
    def from_dict(cls, d: Mapping) -> VerifierDraft:
        return cls(instruction=Instruction.from_dict(d["instruction"]),
                   functions=tuple(Verifier.from_dict(f) for f in d["functions"]),
                   cases=tuple(Case.from_dict(c) for c in d["cases"]))


@dataclass(frozen=True, slots=True)
class BackTranslation:
    """The instruction an LLM wrote back from one function's code, and the NLI verdict."""

    verifier_id: str
    text: str
    label: str                           # "entailment" | "neutral" | "contradiction"

    @property
    def id(self) -> str:
        return content_id("backtranslation", self.verifier_id, self.text, self.label)

    def to_dict(self) -> dict:
        return {"verifier_id": self.verifier_id, "text": self.text, "label": self.label}

    @classmethod
    def from_dict(cls, d: Mapping) -> BackTranslation:
        return cls(verifier_id=d["verifier_id"], text=d["text"], label=d["label"])


@dataclass(frozen=True, slots=True)
class VerifierAudit:
    """One kept function run on degenerate probes (engine.audit): which it accepted, whether
    that flags it as a reward-hacking risk, and the weight it keeps in rewards."""

    verifier_id: str
    accepted: tuple[str, ...] = ()       # probe names the function returned True on
    flagged: bool = False
    weight: float = 1.0

    def to_dict(self) -> dict:
        return {"verifier_id": self.verifier_id, "accepted": list(self.accepted),
                "flagged": self.flagged, "weight": self.weight}

    @classmethod
    def from_dict(cls, d: Mapping) -> VerifierAudit:
        return cls(verifier_id=d["verifier_id"], accepted=tuple(d.get("accepted", ())),
                   flagged=bool(d.get("flagged", False)), weight=float(d.get("weight", 1.0)))


@dataclass(frozen=True, slots=True)
class VerifiedInstruction:
    """An instruction whose functions and cases survived cross-validation.

    `functions` pairs each kept function with its accuracy on the kept cases.
    `back_translations` is filled by the back-translation stage (empty before it).
    `audits` is filled by the verifier audit (empty before it); it does not change the id.
    `family` (engine.families) is set by the compose stage (empty before it, and in runs that do
    not compose); it does not change the id either.
    `probe_verdicts` (verifier id -> what it returned on each audit probe) is filled by
    cross-validation, which runs the probes in the same job as the cases so that the audit
    needs no second fork per function. Transport only: not stored, not compared; an audit
    that finds no verdicts for a function (a resumed run) runs its probes itself.
    """

    instruction: Instruction
    functions: tuple[tuple[Verifier, float], ...]
    cases: tuple[Case, ...]
    back_translations: tuple[BackTranslation, ...] = ()
    audits: tuple[VerifierAudit, ...] = ()
    probe_verdicts: tuple[tuple[str, tuple[bool | None, ...]], ...] = field(default=(), compare=False, repr=False)
    family: str = ""

    @property
    def id(self) -> str:
        return content_id("verified", self.instruction.id, [f.id for f, _ in self.functions],
                          [c.id for c in self.cases])

    @property
    def verifiers(self) -> tuple[Verifier, ...]:
        return tuple(f for f, _ in self.functions)

    def weight(self, verifier_id: str) -> float:
        """The function's weight in a reward (1.0 unless the audit down-weighted it)."""
        return next((a.weight for a in self.audits if a.verifier_id == verifier_id), 1.0)

    def to_dict(self) -> dict:
        d = {"id": self.id, "instruction": self.instruction.to_dict(),
             "functions": [{**f.to_dict(), "accuracy": acc} for f, acc in self.functions],
             "cases": [c.to_dict() for c in self.cases],
             "back_translations": [b.to_dict() for b in self.back_translations]}
        if self.audits:
            d["audits"] = [a.to_dict() for a in self.audits]
        if self.family:
            d["family"] = self.family
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> VerifiedInstruction:
        return cls(instruction=Instruction.from_dict(d["instruction"]),
                   functions=tuple((Verifier.from_dict(f), float(f["accuracy"])) for f in d["functions"]),
                   cases=tuple(Case.from_dict(c) for c in d["cases"]),
                   back_translations=tuple(BackTranslation.from_dict(b)
                                           for b in d.get("back_translations", ())),
                   audits=tuple(VerifierAudit.from_dict(a) for a in d.get("audits", ())),
                   family=d.get("family", ""))


@dataclass(frozen=True, slots=True)
class ComposedInstruction:
    """Verified instructions of different families, none conflicting with another, asked for
    together in one prompt (the compose stage). In order: the first is the task's `instruction`."""

    members: tuple[VerifiedInstruction, ...]

    @property
    def id(self) -> str:
        return content_id("composed", [m.id for m in self.members])


@dataclass(frozen=True, slots=True)
class ConflictPair:
    """Two verified instructions no text can meet both of: no text that met one met the other in
    the sandbox, and the judge confirmed it. Such a pair is never composed."""

    a_id: str
    b_id: str
    a_text: str
    b_text: str
    families: tuple[str, str] = ("", "")
    witnesses_tried: int = 0             # texts both instructions' functions ran on

    @property
    def id(self) -> str:
        return content_id("conflict", self.a_id, self.b_id)

    def to_dict(self) -> dict:
        return {"id": self.id, "a_id": self.a_id, "b_id": self.b_id, "a_text": self.a_text,
                "b_text": self.b_text, "families": list(self.families), "witnesses_tried": self.witnesses_tried}

    @classmethod
    def from_dict(cls, d: Mapping) -> ConflictPair:
        return cls(a_id=d["a_id"], b_id=d["b_id"], a_text=d["a_text"], b_text=d["b_text"],
                   families=tuple(d.get("families", ("", ""))), witnesses_tried=int(d.get("witnesses_tried", 0)))


@dataclass(frozen=True, slots=True)
class Query:
    """A user request from the query set."""

    text: str
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id("query", self.text.strip()))

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text}

    @classmethod
    def from_dict(cls, d: Mapping) -> Query:
        return cls(text=d["text"], id=d.get("id", ""))


@dataclass(frozen=True, slots=True)
class QueryTask:
    """A verified instruction joined to one user query; `prompt` is the user turn sent.

    In memory a task holds its instruction; stored or sent, it names it by id (each instruction
    meets many queries: its functions and cases are written once, not once per task), and
    from_dict looks it up in `instructions`.
    """

    instruction: VerifiedInstruction
    query_id: str
    query: str
    prompt: str
    also: tuple[VerifiedInstruction, ...] = ()   # a composed prompt's further constraints

    @property
    def id(self) -> str:
        if self.also:
            return content_id("task", [c.id for c in self.constraints], self.query_id)
        return content_id("task", self.instruction.id, self.query_id)

    @property
    def constraints(self) -> tuple[VerifiedInstruction, ...]:
        """Every constraint the prompt asks for (one, unless composed)."""
        return (self.instruction, *self.also)

    @property
    def instruction_ids(self) -> list[str]:
        """The constraints' instruction ids (what rows, rewards and the reward service name)."""
        return [c.instruction.id for c in self.constraints]

    @property
    def instruction_text(self) -> str:
        """The constraints as the prompt states them."""
        return join_constraints([c.instruction.text for c in self.constraints])

    def to_dict(self) -> dict:
        d = {"id": self.id, "instruction_id": self.instruction.id,
             "query_id": self.query_id, "query": self.query, "prompt": self.prompt}
        if self.also:
            d["also_ids"] = [c.id for c in self.also]
        return d

    @classmethod
    def from_dict(cls, d: Mapping, instructions: Mapping[str, VerifiedInstruction] | None = None) -> QueryTask:
        def known(vid: str) -> VerifiedInstruction:
            if instructions is not None and vid in instructions:
                return instructions[vid]
            raise KeyError(f"task {d.get('id')}: verified instruction {vid} is not known")
        if "instruction" in d:              # written before tasks named their instruction by id
            instruction = VerifiedInstruction.from_dict(d["instruction"])
        else:
            instruction = known(d["instruction_id"])
        return cls(instruction=instruction, query_id=d["query_id"], query=d["query"], prompt=d["prompt"],
                   also=tuple(known(v) for v in d.get("also_ids", ())))


def join_constraints(texts: list[str]) -> str:
    """Several constraints as one prompt states them: one per line (one alone, as it is)."""
    return "\n".join(texts)


@dataclass(frozen=True, slots=True)
class FunctionResult:
    """What one verification function said about one response."""

    verifier_id: str
    status: str                          # the sandbox Outcome status
    value: bool | None                   # the returned bool; None when not a bool or not "ok"

    @property
    def id(self) -> str:
        return content_id("functionresult", self.verifier_id, self.status, self.value)

    @property
    def passed(self) -> bool:
        return self.status == "ok" and self.value is True

    def to_dict(self) -> dict:
        return {"verifier_id": self.verifier_id, "status": self.status, "value": self.value}

    @classmethod
    def from_dict(cls, d: Mapping) -> FunctionResult:
        return _function_result(d["verifier_id"], d["status"], d.get("value"))


@functools.lru_cache(maxsize=1 << 16, typed=True)   # typed: True and 1 stay apart
def _function_result(verifier_id: str, status: str, value: bool | None) -> FunctionResult:
    # Immutable and few distinct (functions x outcomes), so one instance serves every response
    # that has it: reading a run back (the export) builds K x functions of them per query.
    return FunctionResult(verifier_id=verifier_id, status=status, value=value)


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """One sampled response, its verification and (after scoring) its quality score.

    To a composed prompt: `verdicts` holds whether each constraint passed (by the usual rule,
    over its own functions), `pass_rate` is the share of constraints met, and `passed` needs
    them all."""

    text: str
    pass_rate: float
    results: tuple[FunctionResult, ...] = ()
    passed: bool = False                 # pass_rate above the threshold and not truncated
    finish_reason: str = "stop"
    score: int | None = None             # None: not scored; 0: the judge gave no readable score
    verdicts: tuple[bool, ...] = ()      # per constraint of a composed prompt (empty: one constraint)

    @property
    def id(self) -> str:
        return content_id("response", self.text)

    def with_score(self, score: int | None) -> ResponseRecord:
        return replace(self, score=score)

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "pass_rate": self.pass_rate,
                "results": [r.to_dict() for r in self.results], "passed": self.passed,
                "finish_reason": self.finish_reason, "score": self.score,
                **({"verdicts": list(self.verdicts)} if self.verdicts else {})}

    @classmethod
    def from_dict(cls, d: Mapping) -> ResponseRecord:
        return cls(text=d["text"], pass_rate=float(d["pass_rate"]),
                   results=tuple(FunctionResult.from_dict(r) for r in d.get("results", ())),
                   passed=bool(d.get("passed", False)), finish_reason=d.get("finish_reason", "stop"),
                   score=d.get("score"), verdicts=tuple(map(bool, d.get("verdicts", ()))))


def plain_reject_flaw(r: ResponseRecord) -> str | None:
    """Why a plain reply (config.plain_rejects) cannot be a query-level DPO reject, None when it
    can: empty; truncated (a cut-off reject teaches stopping early); followed (it met a function
    without being told the constraint, so its pass rate is above 0)."""
    return ("empty" if not r.text.strip() else "truncated" if r.finish_reason == "length"
            else "followed" if r.pass_rate > 0 else None)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """All K responses sampled for one QueryTask (failing ones too: they make DPO rejects).

    `plain`: replies to the query alone, without the instruction (config.plain_rejects),
    verified like the samples but never kept for SFT: a failing one is a DPO reject where no
    sample failed."""

    task: QueryTask
    responses: tuple[ResponseRecord, ...] = field(default_factory=tuple)
    model: str = ""
    plain: tuple[ResponseRecord, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return content_id("result", self.task.id, [r.id for r in self.responses])

    @property
    def passed(self) -> tuple[ResponseRecord, ...]:
        return tuple(r for r in self.responses if r.passed)

    def to_dict(self) -> dict:
        d = {"id": self.id, "task": self.task.to_dict(), "model": self.model,
             "responses": [r.to_dict() for r in self.responses]}
        if self.plain:
            d["plain"] = [r.to_dict() for r in self.plain]
        return d

    @classmethod
    def from_dict(cls, d: Mapping, instructions: Mapping[str, VerifiedInstruction] | None = None) -> QueryResult:
        """`instructions`: verified instructions by id, where the task's is looked up."""
        return cls(task=QueryTask.from_dict(d["task"], instructions), model=d.get("model", ""),
                   responses=tuple(ResponseRecord.from_dict(r) for r in d["responses"]),
                   plain=tuple(ResponseRecord.from_dict(r) for r in d.get("plain", ())))


@dataclass(frozen=True, slots=True)
class SampledPrompt:
    """One (instruction, query) prompt and the pass rate of each of its K sampled responses,
    whether any passed or not: what the GRPO prompt set estimates difficulty from."""

    task: QueryTask
    pass_rates: tuple[float, ...]
    model: str = ""

    @classmethod
    def of(cls, result: "QueryResult") -> "SampledPrompt":
        """The prompt of a graded result, with its K responses' pass rates."""
        return cls(result.task, tuple(r.pass_rate for r in result.responses), result.model)

    @property
    def id(self) -> str:
        return content_id("sampled", self.task.id, list(self.pass_rates))

    def to_dict(self) -> dict:
        return {"id": self.id, "task": self.task.to_dict(), "pass_rates": list(self.pass_rates),
                "model": self.model}

    @classmethod
    def from_dict(cls, d: Mapping, instructions: Mapping[str, VerifiedInstruction] | None = None) -> SampledPrompt:
        return cls(task=QueryTask.from_dict(d["task"], instructions),
                   pass_rates=tuple(map(float, d["pass_rates"])), model=d.get("model", ""))


# kind name -> class, so the state store can persist any record and read it back
RECORD_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Instruction, SeedBatch, Verifier, Case, VerifierDraft, BackTranslation,
                VerifiedInstruction, ConflictPair, Query, QueryTask, FunctionResult, ResponseRecord, QueryResult,
                SampledPrompt)
}


# kinds whose stored form names a verified instruction by id
BY_INSTRUCTION_ID = frozenset({"QueryTask", "QueryResult", "SampledPrompt"})


def record_from_dict(kind: str, d: Mapping, instructions: Mapping[str, VerifiedInstruction] | None = None) -> Any:
    """`instructions`: verified instructions by id, for the kinds in BY_INSTRUCTION_ID."""
    if kind in BY_INSTRUCTION_ID:
        return RECORD_TYPES[kind].from_dict(d, instructions)
    return RECORD_TYPES[kind].from_dict(d)
