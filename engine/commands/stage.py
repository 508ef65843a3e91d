"""`autoif stage NAME --input F --output G`: one pipeline stage alone, on the JSONL formats of
the AutoIF reference release.

  crossval       {"instruction", "gpt-answer": [K raw answers]}
                 -> {"instruction", "eval_func": [[code, accuracy], ...], "cases": [[input, bool], ...]}
  verify         {"instruction", "prompt": "... [Query] q", "eval_func": [[code, acc], ...], "gpt-answer": [responses]}
                 -> one {"instruction", "query", "response", "pass_rate", "kept"} per response
  augment        {"instruction"} seeds -> {"instruction", "source"} (seeds and new ones)        [LLM]
  backtranslate  crossval output -> the same with contradicted functions removed              [LLM]
  score          verify output -> {"instruction", "query", "response", "pass_rate", "score", "kept"} [LLM]
  export         score (or verify) output, plus crossval-format rows for instruction-level DPO
                 -> SFT / DPO files in the --output directory

crossval and verify need only the sandbox pool; the LLM stages take --server URL.
A bad line (malformed JSON, missing field) is reported as FILE:LINE on one line and skipped;
the good lines are still processed; a kept/dropped summary ends the run.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson

from engine.config import Config, ConfigError, add_config_arguments, config_from_args
from engine.export import ExportOptions, export
from engine.job import make_client, make_pool
from engine.llm import Completion
from engine.parsing import parse_bool
from engine.prompting import render
from engine.records import (Case, Instruction, Query, QueryResult, QueryTask, ResponseRecord, Verifier,
                            VerifiedInstruction)
from engine.stage import Context, Funnel
from engine.stages.augment import AugmentStage, make_seed_batches
from engine.stages.backtranslate import BackTranslateStage
from engine.stages.base import tally
from engine.stages.crossval import CrossValStage
from engine.stages.responses import grade
from engine.stages.scoring import ScoreStage
from engine.stages.verifiers import parse_answers, pool_answers


NAMES = ("augment", "crossval", "verify", "backtranslate", "score", "export")
NEEDS_LLM = {"augment", "backtranslate", "score"}
NEEDS_POOL = {"crossval", "verify"}
ROW = {"score": "scoring"}          # funnel row of a command whose stage class has another name
QUERY_MARK = "[Query]"


class BadRecord(ValueError):
    """A line that cannot be used; the message says why (file and line are added by the reader)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=NAMES, help="the stage to run")
    parser.add_argument("--input", required=True, metavar="FILE", help="input JSONL")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="output JSONL (for export: a directory)")
    add_config_arguments(parser)             # --server URL (repeatable) among them


def _err(message: str) -> None:
    print(f"autoif stage: {message}", file=sys.stderr)


# ------------------------------------------------------------ input rows

def _field(row: dict, key: str, kind: type | tuple) -> Any:
    if key not in row:
        raise BadRecord(f"missing field '{key}'")
    if not isinstance(row[key], kind):
        raise BadRecord(f"field '{key}' has the wrong type ({type(row[key]).__name__})")
    return row[key]


def _answers(row: dict) -> list[str]:
    value = _field(row, "gpt-answer", (list, str))
    answers = [value] if isinstance(value, str) else value
    if not all(isinstance(a, str) for a in answers):
        raise BadRecord("field 'gpt-answer' must hold strings")
    return answers


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


def _verified(row: dict) -> VerifiedInstruction:
    return VerifiedInstruction(instruction=Instruction(_field(row, "instruction", str), source="input"),
                               functions=_functions(row), cases=_cases(row))


def query_of(prompt: str) -> str:
    """The user query in a reference-format prompt: the text after the last "[Query]"."""
    at = prompt.rfind(QUERY_MARK)
    return (prompt[at + len(QUERY_MARK):] if at >= 0 else prompt).strip().lstrip(":").strip()


def _verified_out(v: VerifiedInstruction) -> dict:
    row = {"instruction": v.instruction.text,
           "eval_func": [[f.code, acc] for f, acc in v.functions],
           "cases": [[c.input, c.expected] for c in v.cases]}
    if v.back_translations:
        row["back_translations"] = [b.to_dict() for b in v.back_translations]
    return row


# ------------------------------------------------------------ the stages on reference rows

Handler = Callable[[dict, Context], Awaitable[list[dict]]]


async def do_crossval(row: dict, ctx: Context) -> list[dict]:
    instruction = Instruction(_field(row, "instruction", str), source="input")
    answers = _answers(row)
    drops, cases = Counter(), Counter()
    parsed = parse_answers(((a, "stop") for a in answers), drops, cases)
    tally(ctx, "crossval.answer", len(parsed), drops)
    if not parsed:
        ctx.funnel.drop("crossval", "no_parsable_answer")
        return []
    outs = await CrossValStage().process(pool_answers(instruction, parsed), ctx)
    return [_verified_out(v) for v in outs]


async def do_verify(row: dict, ctx: Context) -> list[dict]:
    cfg: Config = ctx.config
    verified = _verified(row)
    query = query_of(_field(row, "prompt", str))
    responses = _answers(row)
    functions = verified.verifiers
    if not functions:
        ctx.funnel.drop("verify", "no_functions")
        return []
    results = await ctx.executor.evaluate_many([(f.code, responses) for f in functions])
    records, dropped = grade([Completion(text=r) for r in responses], functions, results, cfg.pass_threshold)
    tally(ctx, "verify.response", sum(r.passed for r in records), dropped)
    if not any(r.passed for r in records):
        ctx.funnel.drop("verify", "no_response_passed")
    return [{"instruction": verified.instruction.text, "query": query, "response": r.text,
             "pass_rate": r.pass_rate, "kept": r.passed} for r in records]


class _Augment:
    """Seeds are the whole input, so augment runs once over all rows rather than per row."""

    def __init__(self) -> None:
        self.seeds: list[Instruction] = []

    def collect(self, rows: list[tuple[int, dict]], path: Path, totals: Totals) -> None:
        for lineno, row in rows:
            text = row.get("instruction") or row.get("text")
            if not isinstance(text, str) or not text.strip():
                _err(f"{path}:{lineno}: missing field 'instruction'")
                totals.bad += 1
                continue
            self.seeds.append(Instruction(text=text.strip(), source="seed"))

    async def finish(self, ctx: Context) -> list[dict]:
        cfg: Config = ctx.config
        unique = list({s.id: s for s in self.seeds}.values())
        stage = AugmentStage(unique)
        batches = make_seed_batches(unique, cfg.augment_batches, cfg.augment_seeds_shown, cfg.seed)
        ctx.funnel.count_in(stage.name, len(batches))
        outs = await asyncio.gather(*(stage.process(b, ctx) for b in batches))
        ctx.funnel.count_kept(stage.name, sum(1 for out in outs if out))
        ctx.funnel.count_out(stage.name, sum(len(out) for out in outs))
        return [{"instruction": i.text, "source": i.source} for out in outs for i in out]


async def do_backtranslate(row: dict, ctx: Context, stage: BackTranslateStage) -> list[dict]:
    outs = await stage.process(_verified(row), ctx)
    return [_verified_out(v) for v in outs]


def _response_row(row: dict, cfg: Config) -> tuple[QueryResult, ResponseRecord]:
    instruction = _field(row, "instruction", str)
    query = _field(row, "query", str)
    response = _field(row, "response", str)
    pass_rate = float(row.get("pass_rate", 1.0))
    passed = bool(row["kept"]) if "kept" in row else pass_rate > cfg.pass_threshold
    score = row.get("score")
    record = ResponseRecord(text=response, pass_rate=pass_rate, passed=passed,
                            score=int(score) if isinstance(score, (int, float)) else None)
    verified = VerifiedInstruction(instruction=Instruction(instruction, source="input"), functions=(), cases=())
    task = QueryTask(instruction=verified, query_id=Query(query).id, query=query,
                     prompt=render("response", query=query, instruction=instruction))
    return QueryResult(task=task, responses=(record,), model=cfg.model), record


async def do_score(row: dict, ctx: Context, stage: ScoreStage) -> list[dict]:
    """Every verified row gets its score and `kept` (score >= score_min); unverified rows are dropped."""
    result, record = _response_row(row, ctx.config)
    if not record.passed:
        ctx.funnel.drop(stage.name, "not_verified")
        return []
    score = await stage.score(ctx, ctx.config, result.task, record)
    if score is None:
        ctx.funnel.drop(stage.name, "unparsable_score")
        return []
    kept = score >= ctx.config.score_min
    if not kept:
        ctx.funnel.drop(stage.name, "low_score")
    return [{"instruction": row["instruction"], "query": row["query"], "response": record.text,
             "pass_rate": record.pass_rate, "score": score, "kept": kept}]


# ------------------------------------------------------------ driver

@dataclass
class Totals:
    lines: int = 0
    bad: int = 0


def read_rows(path: Path, totals: Totals) -> list[tuple[int, dict]]:
    rows = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            totals.lines += 1
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                _err(f"{path}:{lineno}: malformed JSON ({exc})")
                totals.bad += 1
                continue
            if not isinstance(row, dict):
                _err(f"{path}:{lineno}: expected a JSON object")
                totals.bad += 1
                continue
            rows.append((lineno, row))
    return rows


@contextlib.asynccontextmanager
async def open_pool(cfg: Config) -> AsyncIterator[Any]:
    async with make_pool(cfg) as pool:
        yield pool


@contextlib.asynccontextmanager
async def open_llm(cfg: Config) -> AsyncIterator[Any]:
    if not cfg.servers:
        raise ConfigError("this stage asks an LLM: give --server URL (or `servers` in the config)")
    async with make_client(cfg, cfg.servers, cfg.api) as client:
        yield client


async def _run_rows(name: str, rows: list[tuple[int, dict]], handler: Handler, ctx: Context,
                    path: Path, totals: Totals) -> list[dict]:
    """Each row through `handler`, `stage_concurrency` at a time; outputs in input order."""
    limit = asyncio.Semaphore(ctx.config.stage_concurrency)

    async def one(lineno: int, row: dict) -> list[dict]:
        async with limit:
            ctx.funnel.count_in(name)
            try:
                out = await handler(row, ctx)
            except BadRecord as exc:
                _err(f"{path}:{lineno}: {exc}")
                totals.bad += 1
                ctx.funnel.drop(name, "bad_record")
                return []
            if any(o.get("kept", True) for o in out):
                ctx.funnel.count_kept(name)
            ctx.funnel.count_out(name, len(out))
            return out

    outputs = await asyncio.gather(*(one(lineno, row) for lineno, row in rows))
    return [o for out in outputs for o in out]


def _export_rows(rows: list[tuple[int, dict]], cfg: Config, path: Path, totals: Totals,
                 out_dir: Path) -> dict[str, Path]:
    grouped: dict[tuple[str, str], list[tuple[QueryResult, ResponseRecord]]] = defaultdict(list)
    instructions: list[VerifiedInstruction] = []
    for lineno, row in rows:
        try:
            if "response" in row:
                result, record = _response_row(row, cfg)
                grouped[(row["instruction"], row["query"])].append((result, record))
            elif "cases" in row:
                instructions.append(_verified(row))
            else:
                raise BadRecord("expected a response row (instruction, query, response) or a crossval row")
        except BadRecord as exc:
            _err(f"{path}:{lineno}: {exc}")
            totals.bad += 1
    results = [QueryResult(task=group[0][0].task, responses=tuple(r for _, r in group), model=cfg.model)
               for group in grouped.values()]
    return export(out_dir, instructions, results, ExportOptions.from_config(cfg))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.writelines(orjson.dumps(r) + b"\n" for r in rows)
    os.replace(tmp, path)


async def _main(args: argparse.Namespace, cfg: Config) -> int:
    name = args.name
    path, out_path = Path(args.input), Path(args.output)
    totals = Totals()
    rows = read_rows(path, totals)
    ctx = Context(llm=None, executor=None, funnel=Funnel(), config=cfg)  # type: ignore[arg-type]
    if name == "export":
        files = _export_rows(rows, cfg, path, totals, out_path)
        for stem, file in files.items():
            print(f"autoif stage export: wrote {file}", file=sys.stderr)
        print(f"autoif stage export: {totals.lines} lines, {totals.bad} bad", file=sys.stderr)
        return 0 if rows or not totals.lines else 1

    async with contextlib.AsyncExitStack() as stack:
        if name in NEEDS_POOL:
            ctx.executor = await stack.enter_async_context(open_pool(cfg))
        if name in NEEDS_LLM:
            ctx.llm = await stack.enter_async_context(open_llm(cfg))
        if name == "augment":
            augment = _Augment()
            augment.collect(rows, path, totals)
            outputs = await augment.finish(ctx)
        else:
            handler: Handler = {
                "crossval": do_crossval,
                "verify": do_verify,
                "backtranslate": lambda r, c, s=BackTranslateStage(): do_backtranslate(r, c, s),
                "score": lambda r, c, s=ScoreStage(): do_score(r, c, s),
            }[name]
            outputs = await _run_rows(ROW.get(name, name), rows, handler, ctx, path, totals)
    _write_jsonl(out_path, outputs)
    summary = ctx.funnel.to_dict().get(ROW.get(name, name), {})
    dropped = summary.get("dropped", {})
    why = ", ".join(f"{k}={v}" for k, v in dropped.items()) or "none"
    print(f"autoif stage {name}: {totals.lines} lines ({totals.bad} bad); "
          f"{summary.get('kept', len(outputs))} kept, {sum(dropped.values())} dropped ({why}); "
          f"{len(outputs)} records -> {out_path}", file=sys.stderr)
    print(ctx.funnel.format(), file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        _err(str(exc))
        return 2
    if not Path(args.input).is_file():
        _err(f"{args.input}: no such input file")
        return 2
    try:
        return asyncio.run(_main(args, cfg))
    except ConfigError as exc:
        _err(str(exc))
        return 2
    except OSError as exc:
        _err(f"{exc.filename or args.output}: {exc.strerror or exc}")
        return 1
