"""`autoif stage NAME --input F --output G`: one pipeline stage alone, on the file formats of the
AutoIF reference release (engine/reference.py lists them).

The command is a reader (reference rows -> the records `autoif run` passes between stages),
the stage classes `autoif run` uses, run by the same StreamRunner, and a writer (records -> rows):

  augment        seeds (JSONL {"instruction"}, or a .txt file, one a line) -> AugmentStage   [LLM]
  crossval       K verifier answers per instruction -> VerifierStage, CrossValStage
  verify         responses per (instruction, query) -> ResponseStage (a row for every response)
  backtranslate  crossval output -> BackTranslateStage                                         [LLM]
  score          verify output -> ScoreStage (scores already in the file are used, not asked again) [LLM]
  export         score or verify output, plus crossval rows -> SFT / DPO files in the --output directory

Answers the file holds stand in for the LLM's; the LLM stages take --server URL for the rest.
A bad line (malformed JSON, missing field) is reported as FILE:LINE on one line and skipped;
the good lines are still processed; a kept/dropped summary ends the run.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import orjson

from engine.commands import flags
from engine.config import Config, ConfigError, add_config_arguments, config_from_args
from engine.export import ExportOptions, export
from engine.run import Engine, RunSpec, Unrecorded, make_client, make_pool, run_shard
from engine.records import QueryResult, ResponseRecord, VerifiedInstruction
from engine.reference import (BadRecord, FileAnswers, count_lines, dpo_side_rows, grouped, instruction_row,
                              read_crossval, read_rows, read_verify, response_row, score_prompt, score_rows,
                              verified, verified_row, verify_rows)
from engine.stage import Context, Funnel
from engine.stages import load_seed_instructions, make_seed_batches
from engine.stages.scoring import UNSCORED

NAMES = ("augment", "crossval", "verify", "backtranslate", "score", "export")
# the stages of `autoif run` each command runs, in order
CHAINS = {"augment": ("augment",), "crossval": ("verifiers", "crossval"), "verify": ("responses",),
          "backtranslate": ("backtranslate",), "score": ("scoring",)}
NEEDS_POOL = {"crossval", "verify"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=NAMES, help="the stage to run")
    parser.add_argument("--input", required=True, metavar="FILE", help="input JSONL")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="output JSONL (for export: a directory)")
    add_config_arguments(parser)             # --server URL (repeatable) among them
    flags.check_with(parser, "servers", flags.url)


def _err(message: str) -> None:
    print(f"autoif stage: {message}", file=sys.stderr)


class Input:
    """The input file's lines: counts them, and reports each bad one as FILE:LINE on one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = count_lines(path)
        self.bad = 0

    def error(self, lineno: int, why: str) -> None:
        _err(f"{self.path}:{lineno}: {why}")
        self.bad += 1

    def message(self, text: str) -> None:    # "FILE:LINE: why" from a loader
        _err(text)
        self.bad += 1

    def rows(self) -> list[tuple[int, dict]]:
        return list(read_rows(self.path, self.error))


# ------------------------------------------------------------ readers

class Plan:
    """What the command runs: the stage inputs, rows dropped while reading, who answers."""

    def __init__(self, model: str) -> None:
        self.items: list = []
        self.dropped: Counter[str] = Counter()      # rows dropped before the first stage, by reason
        self.answers = FileAnswers(model=model)
        self.needs_llm = False
        self.seeds: list = []
        self.graded: list[QueryResult] | None = None   # verify: every graded result, kept or not


def _each(inp: Input, plan: Plan, read: Callable[[dict], Any]) -> None:
    """`read` on every row; a BadRecord is reported and counted as a dropped row."""
    for lineno, row in inp.rows():
        try:
            plan.items.append(read(row))
        except BadRecord as exc:
            inp.error(lineno, str(exc))
            plan.dropped["bad_record"] += 1


def plan_for(name: str, inp: Input, cfg: Config) -> Plan:
    plan = Plan(cfg.run.model)
    if name == "augment":
        plan.seeds = load_seed_instructions(inp.path, on_error=inp.message)
        plan.items = make_seed_batches(plan.seeds, cfg.augment.batches, cfg.augment.seeds_shown, cfg.run.seed)
        plan.needs_llm = True
    elif name == "crossval":
        _each(inp, plan, lambda row: read_crossval(row, plan.answers))
    elif name == "verify":
        _each(inp, plan, lambda row: read_verify(row, plan.answers))
        plan.graded = []
    elif name == "backtranslate":
        _each(inp, plan, verified)
        plan.needs_llm = True
    elif name == "score":
        rows: list = []
        judged: dict[tuple[str, str, str], list[str]] = {}
        for lineno, row in inp.rows():
            try:
                instruction, query, record = response_row(row, cfg.responses.pass_threshold)
                if not instruction.instruction.text:
                    raise BadRecord("missing field 'instruction' (the judge needs it)")
                gen = row.get("gen")
                if gen is not None and not (isinstance(gen, list) and all(isinstance(g, str) for g in gen)):
                    raise BadRecord("field 'gen' must hold the judge's answers (strings)")
            except BadRecord as exc:
                inp.error(lineno, str(exc))
                plan.dropped["bad_record"] += 1
                continue
            if not record.passed:
                plan.dropped["not_verified"] += 1
                continue
            rows.append((instruction, query, record))
            if gen:
                judged[(instruction.instruction.text, query, record.text)] = gen
        plan.items = grouped(rows, cfg.run.model)
        for result in plan.items:
            for r in result.responses:
                gen = judged.get((result.task.instruction.instruction.text, result.task.query, r.text))
                if gen:
                    plan.answers.add(score_prompt(result, r), gen)
                elif r.score is None:
                    plan.needs_llm = True
    return plan


# ------------------------------------------------------------ writers

def writer_for(name: str, cfg: Config) -> tuple[Callable[[Any], list[dict]], Callable[[Any], str] | None]:
    """(output record -> rows, output record -> the id of the input it came from)."""
    if name == "augment":
        return instruction_row, None
    if name in ("crossval", "backtranslate"):
        return verified_row, lambda v: v.instruction.id
    if name == "verify":
        return verify_rows, lambda r: r.task.id
    return (lambda r: score_rows(r, cfg.scoring.min, UNSCORED)), lambda r: r.task.id


def every_response(plan: Plan) -> list[QueryResult]:
    """verify: every graded result, passing or not, and the responses of tasks without a
    function to check them (pass rate 0, not kept): a row for each response read."""
    graded = plan.graded or []
    seen = {r.task.id for r in graded}
    unchecked = [QueryResult(task=t, model=plan.answers.model,
                             responses=tuple(ResponseRecord(text=a, pass_rate=0.0)
                                             for a in plan.answers.answers.get(t.prompt, ())))
                 for t in plan.items if not t.instruction.verifiers and t.id not in seen]
    return graded + unchecked


class Graded(Unrecorded):
    """The recorder of `autoif stage`: keeps nothing but every graded result, for verify."""

    def __init__(self, graded: list[QueryResult]) -> None:
        self.kept = graded

    def graded(self, result: QueryResult) -> None:
        self.kept.append(result)


def input_id(item: Any) -> str:
    if isinstance(item, VerifiedInstruction):
        return item.instruction.id
    if isinstance(item, QueryResult):
        return item.task.id
    return item.id                          # Instruction, QueryTask


# ------------------------------------------------------------ running

@contextlib.asynccontextmanager
async def open_pool(cfg: Config) -> AsyncIterator[Any]:
    async with make_pool(cfg) as pool:
        yield pool


@contextlib.asynccontextmanager
async def open_llm(cfg: Config) -> AsyncIterator[Any]:
    if not cfg.run.servers:
        raise ConfigError("this stage asks an LLM: give --server URL (or `servers` in the config)")
    if cfg.roles.servers or cfg.roles.models:   # one stage, one server: roles are `autoif run`'s
        raise ConfigError("--role-server/--role-model: `autoif stage` asks one server; give it as --server "
                          "(and --model)")
    async with make_client(cfg, cfg.run.servers, cfg.run.api) as client:
        yield client


async def run_stage(name: str, plan: Plan, cfg: Config, out_dir: Path) -> tuple[list, Funnel]:
    """The command's stages over the plan's items, through the run path `autoif run` takes."""
    chain = CHAINS[name]
    funnel = Funnel()
    if plan.dropped:
        funnel.count_in(chain[0], sum(plan.dropped.values()))
        for reason, n in plan.dropped.items():
            funnel.drop(chain[0], reason, n)
    outputs: list = []
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(cfg)) if name in NEEDS_POOL else None
        if plan.needs_llm:
            plan.answers.llm = await stack.enter_async_context(open_llm(cfg))
            plan.answers.model = plan.answers.model or getattr(plan.answers.llm, "model", "")
        engine = Engine(Context(llm=plan.answers, executor=pool, funnel=funnel), pool=pool)  # type: ignore[arg-type]
        await run_shard(RunSpec(cfg, out_dir, stages=chain, seeds=plan.seeds), engine, plan.items,
                        recorder=Graded(plan.graded) if plan.graded is not None else None,
                        sink=outputs.append)
    return outputs, funnel


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.writelines(orjson.dumps(r) + b"\n" for r in rows)
    os.replace(tmp, path)


def _export_rows(inp: Input, rows: list[tuple[int, dict]], cfg: Config, out_dir: Path) -> dict[str, Path]:
    responses: list = []
    instructions: list[VerifiedInstruction] = []
    for lineno, row in rows:
        try:
            if isinstance(row.get("response"), list):       # the reference's DPO-side rows
                responses += dpo_side_rows(row)
            elif "response" in row:
                responses.append(response_row(row, cfg.responses.pass_threshold))
            elif "cases" in row:
                instructions.append(verified(row))
            else:
                raise BadRecord("expected a response row (instruction, query, response) or a crossval row")
        except BadRecord as exc:
            inp.error(lineno, str(exc))
    return export(out_dir, instructions, grouped(responses, cfg.run.model), ExportOptions.from_config(cfg))


async def _main(args: argparse.Namespace, cfg: Config) -> int:
    name = args.name
    out_path = Path(args.output)
    inp = Input(Path(args.input))
    if name == "export":
        rows = inp.rows()
        files = _export_rows(inp, rows, cfg, out_path)
        for file in files.values():
            print(f"autoif stage export: wrote {file}", file=sys.stderr)
        print(f"autoif stage export: {inp.lines} lines, {inp.bad} bad", file=sys.stderr)
        return 0 if rows or not inp.lines else 1

    if name == "crossval":                  # the reference release's verifier answers are JSON
        cfg = cfg.replace_flat(verifier_style="json")
    plan = plan_for(name, inp, cfg)
    outputs, funnel = await run_stage(name, plan, cfg, out_path.parent)
    if plan.graded is not None:             # verify writes every response, not only kept ones
        outputs = every_response(plan)
    to_rows, origin = writer_for(name, cfg)
    if origin is not None:                  # in input order, whatever order they finished in
        order = {}
        for i, item in enumerate(plan.items):
            order.setdefault(input_id(item), i)
        outputs.sort(key=lambda o: order.get(origin(o), len(order)))
    rows = [row for o in outputs for row in to_rows(o)]
    _write_jsonl(out_path, rows)
    table = funnel.to_dict()
    chain = CHAINS[name]
    dropped: Counter[str] = Counter()
    for stage in chain:
        dropped.update(table.get(stage, {}).get("dropped", {}))
    why = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"
    kept = table.get(chain[-1], {}).get("kept", 0)
    print(f"autoif stage {name}: {inp.lines} lines ({inp.bad} bad); "
          f"{kept} kept, {sum(dropped.values())} dropped ({why}); "
          f"{len(rows)} records -> {out_path}", file=sys.stderr)
    print(funnel.format(), file=sys.stderr)
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
