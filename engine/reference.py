"""The AutoIF reference release's file formats, as records the stages take and rows they give back.

`autoif stage NAME` reads such a file into the records a stage of `autoif run` takes, runs the
real stage on them, and writes its outputs back in the same formats:

  crossval   {"instruction", "gpt-answer": [K raw verifier answers]}
             -> {"instruction", "eval_func": [[code, accuracy], ...], "cases": [[input, bool], ...]}
  verify     {"instruction", "prompt": "... [Query] q", "eval_func": [[code, acc], ...], "gpt-answer": [responses]}
             -> one {"instruction", "query", "response", "pass_rate", "kept", "verdicts"} per
             response read, passing or not; "verdicts": each function's {"status", "value"}, in
             the order of "eval_func".
             The DPO-side file (dpo_query_w_funcs) has no "instruction": its "prompt" is the whole
             user turn (instruction and query), and the rows it gives have no "instruction" either.
  score      verify output (a "score", or the reference's judge answers in "gen", is used as is)
             -> {"instruction", "query", "response", "pass_rate", "score", "kept"}
  export     score or verify output, the reference's DPO-side {"query", "response": [[text, pass_rate], ...]},
             and crossval output (instruction-level DPO pairs)

Answers a file already holds (the K verifier answers, the responses, the judge's answers) are
served by `FileAnswers` in place of the LLM, so the stages parse, execute and grade them exactly
as they do what a server sends.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import orjson

from engine.errors import InputError
from engine.llm import LLM, Completion, Message, SamplingParams
from engine.parsing import parse_bool
from engine.prompting import render
from engine.records import (Case, Instruction, Query, QueryResult, QueryTask, ResponseRecord, Verifier,
                            VerifiedInstruction)

QUERY_MARK = "[Query]"


class BadRecord(InputError):
    """A line that cannot be used; the message says why (file and line are added by the reader)."""


# ------------------------------------------------------------ lines

def read_rows(path: Path, on_error: Callable[[int, str], None]) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) of each non-blank line; `on_error(lineno, why)` for the others."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                on_error(lineno, f"malformed JSON ({exc})")
                continue
            if not isinstance(row, dict):
                on_error(lineno, "expected a JSON object")
                continue
            yield lineno, row


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


# ------------------------------------------------------------ fields

def _field(row: dict, key: str, kind: type | tuple) -> Any:
    if key not in row:
        raise BadRecord(f"missing field '{key}'")
    if not isinstance(row[key], kind):
        raise BadRecord(f"field '{key}' has the wrong type ({type(row[key]).__name__})")
    return row[key]


def _texts(row: dict, key: str) -> list[str]:
    value = _field(row, key, (list, str))
    texts = [value] if isinstance(value, str) else value
    if not all(isinstance(a, str) for a in texts):
        raise BadRecord(f"field '{key}' must hold strings")
    return texts


def _functions(row: dict) -> tuple[tuple[Verifier, float], ...]:
    out = []
    for entry in _field(row, "eval_func", list):
        if isinstance(entry, str):
            out.append((Verifier(code=entry), 1.0))
        elif (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
              and isinstance(entry[1], (int, float))):
            out.append((Verifier(code=entry[0]), float(entry[1])))
        else:
            raise BadRecord("field 'eval_func' must be a list of [code, accuracy]")
    return tuple(out)


def _cases(row: dict) -> tuple[Case, ...]:
    out = []
    for entry in row.get("cases", ()):
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str):
            expected = parse_bool(entry[1])
        elif isinstance(entry, dict) and isinstance(entry.get("input"), str):
            entry, expected = (entry["input"], None), parse_bool(entry.get("output", entry.get("expected")))
        else:
            expected = None
        if expected is None:
            raise BadRecord("field 'cases' must be a list of [input, true/false]")
        out.append(Case(input=entry[0], expected=expected))
    return tuple(out)


def verified(row: dict) -> VerifiedInstruction:
    """A crossval-format row (instruction, eval_func, cases)."""
    return VerifiedInstruction(instruction=Instruction(_field(row, "instruction", str), source="input"),
                               functions=_functions(row), cases=_cases(row))


def query_of(prompt: str) -> str:
    """The user query in a reference-format prompt: the text after the last "[Query]"."""
    at = prompt.rfind(QUERY_MARK)
    return (prompt[at + len(QUERY_MARK):] if at >= 0 else prompt).strip().lstrip(":").strip()


def task(instruction: VerifiedInstruction, query: str, prompt: str | None = None) -> QueryTask:
    """The QueryTask `autoif run` would make; `prompt`: the user turn when it is given whole."""
    text = instruction.instruction.text
    return QueryTask(instruction=instruction, query_id=Query(query).id, query=query,
                     prompt=prompt if prompt is not None else render("response", query=query, instruction=text))


# ------------------------------------------------------------ answers a file holds

class FileAnswers:
    """An LLM that answers from the input file: each prompt the file has answers for gets them
    all (whatever n asks); any other prompt goes to `llm`, and without one is an error."""

    def __init__(self, llm: LLM | None = None, model: str = "") -> None:
        self.llm = llm
        self.model = getattr(llm, "model", "") or model
        self.answers: dict[str, list[str]] = {}
        self.asked = 0                      # prompts sent on to `llm`

    def add(self, prompt: str, answers: Sequence[str]) -> None:
        self.answers[prompt] = list(answers)

    def has(self, prompt: str) -> bool:
        return prompt in self.answers

    async def chat(self, messages: Sequence[Message], *, n: int = 1,
                   params: SamplingParams | None = None) -> list[Completion]:
        prompt = messages[-1]["content"]
        if prompt in self.answers:
            return [Completion(text=t) for t in self.answers[prompt]]
        if self.llm is None:
            raise NoAnswer("the input holds no answer for this request and no LLM server was given")
        self.asked += 1
        return await self.llm.chat(messages, n=n, params=params)

    async def generate(self, prompt: str, *, n: int = 1,
                       params: SamplingParams | None = None) -> list[Completion]:
        return await self.chat([{"role": "user", "content": prompt}], n=n, params=params)


class NoAnswer(InputError):
    """A request the input holds no answer for, with no LLM server to ask."""

    reason = "no_answer_in_input"          # the funnel's drop reason


# ------------------------------------------------------------ readers: rows -> stage inputs

def read_crossval(row: dict, answers: FileAnswers) -> Instruction:
    """The instruction; its K verifier answers become what the verifier request returns."""
    instruction = Instruction(_field(row, "instruction", str), source="input")
    answers.add(render("verifier", instruction=instruction.text), _texts(row, "gpt-answer"))
    return instruction


def read_verify(row: dict, answers: FileAnswers) -> QueryTask:
    """The task; its responses become what the response request returns."""
    prompt = _field(row, "prompt", str)
    if "instruction" in row:
        item = task(VerifiedInstruction(Instruction(_field(row, "instruction", str), source="input"),
                                        _functions(row), ()), query_of(prompt))
    else:                                   # the DPO-side file: the prompt is the whole user turn
        item = task(VerifiedInstruction(Instruction("", source="input"), _functions(row), ()),
                    prompt, prompt=prompt)
    answers.add(item.prompt, _texts(row, "gpt-answer"))
    return item


def response_row(row: dict, pass_threshold: float) -> tuple[VerifiedInstruction, str, ResponseRecord]:
    """One verify-output row: its instruction, query and response (score set when it has one)."""
    instruction = Instruction(_field(row, "instruction", str) if "instruction" in row else "", source="input")
    query = _field(row, "query", str)
    response = _field(row, "response", str)
    pass_rate = float(row.get("pass_rate", 1.0))
    passed = bool(row["kept"]) if "kept" in row else pass_rate > pass_threshold
    score = row.get("score")
    record = ResponseRecord(text=response, pass_rate=pass_rate, passed=passed,
                            score=int(score) if isinstance(score, (int, float)) else None)
    return VerifiedInstruction(instruction=instruction, functions=(), cases=()), query, record


def grouped(rows: list[tuple[VerifiedInstruction, str, ResponseRecord]], model: str) -> list[QueryResult]:
    """One QueryResult per (instruction, query), responses in input order."""
    groups: dict[tuple[str, str], list] = {}
    for instruction, query, record in rows:
        groups.setdefault((instruction.instruction.text, query), []).append((instruction, query, record))
    out = []
    for members in groups.values():
        instruction, query, _ = members[0]
        prompt = None if instruction.instruction.text else query
        out.append(QueryResult(task=task(instruction, query, prompt),
                               responses=tuple(r for _, _, r in members), model=model))
    return out


def score_prompt(result: QueryResult, response: ResponseRecord) -> str:
    return render("score", instruction=result.task.instruction.instruction.text, query=result.task.query,
                  response=response.text)


def dpo_side_rows(row: dict) -> list[tuple[VerifiedInstruction, str, ResponseRecord]]:
    """The reference's DPO-side {"query", "response": [[text, pass_rate], ...]}: pass rates only."""
    query = _field(row, "query", str)
    out = []
    for entry in _field(row, "response", list):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], (int, float))):
            raise BadRecord("field 'response' must be a list of [text, pass_rate]")
        record = ResponseRecord(text=entry[0], pass_rate=float(entry[1]), passed=float(entry[1]) >= 0.5)
        out.append((VerifiedInstruction(Instruction("", source="input"), (), ()), query, record))
    return out


# ------------------------------------------------------------ writers: stage outputs -> rows

def verified_row(v: VerifiedInstruction) -> list[dict]:
    row = {"instruction": v.instruction.text,
           "eval_func": [[f.code, acc] for f, acc in v.functions],
           "cases": [[c.input, c.expected] for c in v.cases]}
    if v.back_translations:
        row["back_translations"] = [b.to_dict() for b in v.back_translations]
    return [row]


def _head(result: QueryResult) -> dict:
    text = result.task.instruction.instruction.text
    return {**({"instruction": text} if text else {}), "query": result.task.query}


def verify_rows(result: QueryResult) -> list[dict]:
    """One row per response, kept or not, with each function's verdict on it."""
    head = _head(result)
    return [{**head, "response": r.text, "pass_rate": r.pass_rate, "kept": r.passed,
             "verdicts": [{"status": v.status, "value": v.value} for v in r.results]}
            for r in result.responses]


def score_rows(result: QueryResult, score_min: int, unscored: int) -> list[dict]:
    """One row per verified response the judge gave a readable score."""
    head = _head(result)
    return [{**head, "response": r.text, "pass_rate": r.pass_rate, "score": r.score,
             "kept": r.score >= score_min}
            for r in result.responses if r.passed and r.score is not None and r.score != unscored]


def instruction_row(i: Instruction) -> list[dict]:
    return [{"instruction": i.text, "source": i.source}]
