"""Training files from the pipeline's records: SFT and DPO, for LLaMA-Factory and TRL.

SFT: the best kept responses of each (instruction, query) — verified (pass rate above the
threshold) and, when scored, scored at least `score_min`. In precision mode
(config.precision_export) only responses that every kept function the audit did not flag
passes: a majority of functions can share one wrong idea of the constraint, while a response
that each of them passes is wrong only where all of them are. The DPO chosen replies follow the
same rule; the funnel row `export.precision` counts the prompts it leaves without an answer.
DPO, two levels, in two sets of files (each file is one table: every row has one schema,
which `datasets.load_dataset("json")`, TRL and LLaMA-Factory need):
- query level (`dpo_trl`, `dpo_llamafactory`): chosen = a response with pass rate >= 0.5,
  rejected = one with pass rate 0; where no sample has pass rate 0, a finished plain reply
  to the query (written without the instruction, config.plain_rejects) that fails every
  function. `provenance.rejected_source` says which ("sample" or "plain");
- instruction level (`dpo_cases_trl`, `dpo_cases_llamafactory`, from cross-validated test
  cases): prompt = the instruction, chosen = a case input expected True, rejected = one
  expected False.
`verifiers.jsonl`: each kept instruction with its functions' code, accuracies and cases.
`dataset_info.json`: LLaMA-Factory's dataset entries for the training files.
Every record carries `provenance` (instruction id, function ids, model: the responder's, config
hash, and pass rate and score where there is one); `verifiers.jsonl` rows also name each role's
model (`models`: writer, coder, responder, judge: they wrote its instructions, code and cases).
JSONL, and Parquet unless turned off (pyarrow is a dependency). Files are written to a temp name and renamed, so a reader never sees half a
file; their mode follows the umask.
"""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import orjson

from engine.records import QueryResult, ResponseRecord, VerifiedInstruction, plain_reject_flaw
from engine.roles import ROLES
from engine.stage import Funnel

SFT_FORMATS = ("alpaca", "sharegpt", "trl")
DPO_CHOSEN_MIN_PASS = 0.5
PRECISION_ROW = "export.precision"


@dataclass(frozen=True)
class ExportOptions:
    """`model`: the responder's, which wrote the responses; `models`: each role's (engine.roles)."""

    model: str = ""
    models: Mapping[str, str] = field(default_factory=dict)
    config_hash: str = ""
    score_min: int = 8
    formats: tuple[str, ...] = SFT_FORMATS
    dpo: bool = True
    sft_per_query: int = 1
    dpo_pairs_per_instruction: int = 2
    parquet: bool = True
    precision: bool = False
    composed: bool = False   # every row also carries n_constraints and instruction_ids (config.compose)

    def role_models(self) -> dict[str, str]:
        """Each role's model; where none are given, `model` played every role."""
        return dict(self.models) or {role: self.model for role in ROLES}

    @classmethod
    def from_config(cls, cfg: Any) -> ExportOptions:
        return cls(model=cfg.run.model, config_hash=cfg.config_hash(), score_min=cfg.scoring.min,
                   formats=tuple(cfg.export.formats), dpo=cfg.export.dpo, sft_per_query=cfg.export.sft_per_query,
                   dpo_pairs_per_instruction=cfg.export.dpo_pairs_per_instruction, parquet=cfg.export.parquet,
                   precision=cfg.export.precision, composed=cfg.compose.enabled)


@dataclass(frozen=True)
class Example:
    """Format-neutral SFT example or DPO pair (rejected is None for SFT)."""

    prompt: str
    chosen: str
    rejected: str | None
    provenance: dict
    instruction_ids: tuple[str, ...] = ()   # the prompt's constraints


# ------------------------------------------------------------ selection

def usable(r: ResponseRecord, score_min: int) -> bool:
    """Verified, and not scored below the bar (score None: scoring was off)."""
    return r.passed and (r.score is None or r.score >= score_min)


def passed_by_every_function(r: ResponseRecord, inst: VerifiedInstruction) -> bool:
    """Every kept function the audit did not flag passed `r` (and there is one such function)."""
    flagged = {a.verifier_id for a in inst.audits if a.flagged}
    wanted = {f.id for f, _ in inst.functions} - flagged
    return bool(wanted) and wanted <= {res.verifier_id for res in r.results if res.passed}


def exportable(r: ResponseRecord, result: QueryResult, opts: ExportOptions) -> bool:
    """Usable, and in precision mode passed by every unflagged function."""
    return usable(r, opts.score_min) and (not opts.precision
                                          or passed_by_every_function(r, result.task.instruction))


def count_precision(results: Iterable[QueryResult], opts: ExportOptions, funnel: Funnel) -> None:
    """Precision mode's funnel row: in = prompts with a usable response, kept = those with an
    exportable one, dropped (`not_every_function`) = those precision mode leaves without."""
    if not opts.precision:
        return
    usable_prompts = [res for res in results if any(usable(r, opts.score_min) for r in res.responses)]
    kept = sum(any(exportable(r, res, opts) for r in res.responses) for res in usable_prompts)
    funnel.count_in(PRECISION_ROW, len(usable_prompts))
    funnel.count_kept(PRECISION_ROW, kept)
    funnel.count_out(PRECISION_ROW, kept)
    if len(usable_prompts) > kept:
        funnel.drop(PRECISION_ROW, "not_every_function", len(usable_prompts) - kept)


def _rank(r: ResponseRecord) -> tuple:
    return (r.score or 0, r.pass_rate, -len(r.text))


def _model(result: QueryResult, opts: ExportOptions) -> str:
    """The model that wrote the responses; the run's (named by the server) when the request
    went out as "default"."""
    return result.model if result.model not in ("", "default") else opts.model or result.model


def _provenance(result: QueryResult, level: str, opts: ExportOptions, **extra: Any) -> dict:
    inst = result.task.instruction
    return {"level": level, "instruction_id": inst.instruction.id, "query_id": result.task.query_id,
            "function_ids": [f.id for c in result.task.constraints for f, _ in c.functions],
            "model": _model(result, opts),
            "config_hash": opts.config_hash, **extra}


def sft_examples(results: Iterable[QueryResult], opts: ExportOptions) -> list[Example]:
    out = []
    for result in results:
        best = sorted((r for r in result.responses if exportable(r, result, opts)), key=_rank, reverse=True)
        for r in best[:opts.sft_per_query]:
            out.append(Example(result.task.prompt, r.text, None,
                               _provenance(result, "sft", opts, pass_rate=r.pass_rate, score=r.score,
                                           response_id=r.id), tuple(result.task.instruction_ids)))
    return out


def query_pairs(results: Iterable[QueryResult], opts: ExportOptions) -> list[Example]:
    out = []
    for result in results:
        chosen = sorted((r for r in result.responses
                         if r.pass_rate >= DPO_CHOSEN_MIN_PASS and exportable(r, result, opts)),
                        key=_rank, reverse=True)
        # the model's own failure under the instruction first: the sharper contrast
        rejected = [(r, "sample") for r in _failed_samples(result)]
        rejected += [(r, "plain") for r in result.plain if plain_reject_flaw(r) is None]
        if chosen and rejected:
            c, (r, source) = chosen[0], rejected[0]
            out.append(Example(result.task.prompt, c.text, r.text,
                               _provenance(result, "query", opts, pass_rate=c.pass_rate, score=c.score,
                                           rejected_pass_rate=r.pass_rate, rejected_source=source),
                               tuple(result.task.instruction_ids)))
    return out


def _failed_samples(result: QueryResult) -> list[ResponseRecord]:
    """Samples that can be a reject: one constraint's failing all its functions; to a composed
    prompt (chosen: every constraint met) one that misses a constraint, those missing exactly
    one first (the hardest negative: it differs from the chosen in that one constraint)."""
    finished = [r for r in result.responses if r.text.strip()]
    if not result.task.also:
        return [r for r in finished if r.pass_rate == 0]
    missed = [r for r in finished if r.verdicts and not all(r.verdicts) and r.finish_reason != "length"]
    return sorted(missed, key=lambda r: sum(not v for v in r.verdicts))


def _distinct(instructions: Iterable[VerifiedInstruction]) -> list[VerifiedInstruction]:
    return list({inst.instruction.id: inst for inst in instructions}.values())


def instruction_pairs(instructions: Iterable[VerifiedInstruction], opts: ExportOptions) -> list[Example]:
    """Pairs of test cases (one expected True, one expected False) per instruction: another
    table than the query-level pairs (no query, no pass rate), so another file."""
    out = []
    for inst in _distinct(instructions):
        good = [c for c in inst.cases if c.expected]
        bad = [c for c in inst.cases if not c.expected]
        for c, r in list(zip(good, bad))[:opts.dpo_pairs_per_instruction]:
            out.append(Example(inst.instruction.text, c.input, r.input, {
                "level": "instruction", "instruction_id": inst.instruction.id,
                "function_ids": [f.id for f, _ in inst.functions],
                "model": opts.model, "config_hash": opts.config_hash}, (inst.instruction.id,)))
    return out


def verifier_rows(instructions: Iterable[VerifiedInstruction], opts: ExportOptions) -> list[dict]:
    """Each kept instruction with its functions (code, accuracy, back-translation) and cases,
    so the verifiers can be reused (as rewards, or to check other data)."""
    rows = []
    for inst in _distinct(instructions):
        bt = {b.verifier_id: b for b in inst.back_translations}
        rows.append({
            "instruction_id": inst.instruction.id, "instruction": inst.instruction.text,
            "source": inst.instruction.source,
            "functions": [{"id": f.id, "code": f.code, "accuracy": float(acc),
                           "back_translation": bt[f.id].text if f.id in bt else "",
                           "nli_label": bt[f.id].label if f.id in bt else ""}
                          for f, acc in inst.functions],
            "cases": [{"input": c.input, "expected": c.expected} for c in inst.cases],
            "model": opts.model, "models": opts.role_models(), "config_hash": opts.config_hash})
    return rows


def instructions_of(results: Iterable[QueryResult]) -> list[VerifiedInstruction]:
    """The distinct verified instructions behind some results."""
    return list({r.task.instruction.instruction.id: r.task.instruction for r in results}.values())


# ------------------------------------------------------------ formats

def alpaca(e: Example) -> dict:
    return {"instruction": e.prompt, "input": "", "output": e.chosen, "provenance": e.provenance}


def sharegpt(e: Example) -> dict:
    return {"conversations": [{"from": "human", "value": e.prompt}, {"from": "gpt", "value": e.chosen}],
            "provenance": e.provenance}


def trl_sft(e: Example) -> dict:
    return {"messages": [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.chosen}],
            "provenance": e.provenance}


def llamafactory_dpo(e: Example) -> dict:
    return {"conversations": [{"from": "human", "value": e.prompt}],
            "chosen": {"from": "gpt", "value": e.chosen},
            "rejected": {"from": "gpt", "value": e.rejected}, "provenance": e.provenance}


def trl_dpo(e: Example) -> dict:
    return {"prompt": [{"role": "user", "content": e.prompt}],
            "chosen": [{"role": "assistant", "content": e.chosen}],
            "rejected": [{"role": "assistant", "content": e.rejected}], "provenance": e.provenance}


SFT_WRITERS = {"alpaca": alpaca, "sharegpt": sharegpt, "trl": trl_sft}
DPO_WRITERS = {"llamafactory": llamafactory_dpo, "trl": trl_dpo}


# ------------------------------------------------------------ tables

@dataclass(frozen=True)
class Table:
    """One export file: rows that all share one schema, and how LLaMA-Factory reads it
    (`dataset_info`: its entry in dataset_info.json, None when it is not a training set)."""

    stem: str
    rows: list[dict]
    dataset_info: dict | None = None


_SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
_OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
SFT_DATASET_INFO = {
    "alpaca": {"columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"}, "tags": _SHAREGPT_TAGS},
    "trl": {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": _OPENAI_TAGS},
}
DPO_DATASET_INFO = {"ranking": True, "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
                    "tags": _SHAREGPT_TAGS}


def tables(instructions: Iterable[VerifiedInstruction], results: Iterable[QueryResult],
           opts: ExportOptions) -> list[Table]:
    """Every export table. Another export is one more Table here."""
    instructions, results = list(instructions), list(results)
    out: list[Table] = []

    def rows(writer, examples: list[Example]) -> list[dict]:
        if not opts.composed:
            return [writer(e) for e in examples]
        return [{**writer(e), **constraint_columns(e.instruction_ids)} for e in examples]

    sft = sft_examples(results, opts)
    for fmt in opts.formats:
        out.append(Table(f"sft_{fmt}", rows(SFT_WRITERS[fmt], sft), SFT_DATASET_INFO[fmt]))
    if opts.dpo:
        for name, examples in (("dpo", query_pairs(results, opts)),
                               ("dpo_cases", instruction_pairs(instructions, opts))):
            out.append(Table(f"{name}_llamafactory", rows(llamafactory_dpo, examples), DPO_DATASET_INFO))
            out.append(Table(f"{name}_trl", rows(trl_dpo, examples)))
    if instructions:
        rows_ = verifier_rows(instructions, opts)
        if opts.composed:
            family = {v.instruction.id: v.family for v in instructions}
            rows_ = [{**r, "family": family[r["instruction_id"]], **constraint_columns((r["instruction_id"],))}
                     for r in rows_]
        out.append(Table("verifiers", rows_))
    return out


def constraint_columns(instruction_ids: Sequence[str]) -> dict:
    """The columns every row of a composing run's files has, one constraint or several."""
    return {"n_constraints": len(instruction_ids), "instruction_ids": list(instruction_ids)}


# ------------------------------------------------------------ files

def _mode() -> int:
    """What open() would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: Path, write, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode() if mode is None else mode)   # mkstemp makes 0600; follow the umask
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    _atomic(path, lambda fh: fh.writelines(orjson.dumps(r) + b"\n" for r in rows))


class ParquetUnavailable(RuntimeError):
    """Parquet asked for and pyarrow cannot be imported."""

    @classmethod
    def because(cls, exc: ImportError) -> ParquetUnavailable:
        return cls(f"Parquet needs pyarrow ({exc}): pip install pyarrow, or turn it off with --no-parquet")


def pyarrow_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.json  # noqa: F401  (write_parquet reads the JSONL with it)
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def warm_up_parquet() -> None:
    """Import Arrow and run its JSON reader and Parquet writer once, on a one-row table.

    Their first use is slow (imports, Arrow's thread pool and allocator), and a run would
    otherwise pay for it after its last request; run_full calls this in a thread while the
    server generates. Any failure is left for the real export to report."""
    try:
        import io

        import pyarrow.json as pa_json
        import pyarrow.parquet as pq
        pq.write_table(pa_json.read_json(io.BytesIO(b'{"a": [{"b": "c"}], "d": 1}\n')), io.BytesIO())
    except Exception:  # noqa: BLE001 - a warm-up only
        pass


def _has_timestamp(t) -> bool:
    import pyarrow.types as pt
    if pt.is_timestamp(t) or pt.is_date(t) or pt.is_time(t):
        return True
    return any(_has_timestamp(t.field(i).type) for i in range(t.num_fields))


def write_parquet(path: Path, rows: Sequence[dict], jsonl: Path | None = None, schema: Any = None) -> None:
    """`rows` as Parquet. With `jsonl` (the same rows, just written) Arrow's own JSON reader
    parses that file instead: converting Python objects (Table.from_pylist) imports pandas on
    first use, which would be most of the export's time at the end of a run. Both give the same schema and
    values (tests/engine/test_export.py). The reader types a column of ISO-date-like strings as
    timestamps; such a table, or one it cannot type in one pass, is converted from `rows`.
    `schema` (a pyarrow.Schema) fixes the columns and their types instead of inferring them, so
    files with no rows, or with only whole-number rates, still have the one schema."""
    try:
        import pyarrow as pa
        import pyarrow.json as pa_json
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ParquetUnavailable.because(exc) from None
    table = None
    if jsonl is not None:
        try:  # one block: types inferred over every row, as from_pylist does
            size = max(1 << 20, jsonl.stat().st_size + 1)
            parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
            table = pa_json.read_json(jsonl, read_options=pa_json.ReadOptions(block_size=size),
                                      parse_options=parse if schema is not None else None)
        except (pa.ArrowInvalid, OSError):
            table = None
        if table is not None and any(_has_timestamp(f.type) for f in table.schema):
            table = None
    if table is None:
        table = pa.Table.from_pylist(list(rows), schema=schema)
    _atomic(path, lambda fh: pq.write_table(table, fh))


def _write_table(table: Table, paths: dict[str, Path], parquet: bool) -> None:
    write_jsonl(paths[table.stem], table.rows)
    if parquet:
        write_parquet(paths[f"{table.stem}.parquet"], table.rows, paths[table.stem])


def export(out_dir: str | Path, instructions: Iterable[VerifiedInstruction], results: Iterable[QueryResult],
           opts: ExportOptions) -> dict[str, Path]:
    """Write every table with rows as JSONL (and Parquet), then dataset_info.json; returns
    {file stem: path}. An empty table writes no file (a 0-byte JSONL loads nowhere) and removes
    the file a rerun of the same run left before. Tables are written side by side in threads:
    Arrow's JSON reader and Parquet writer and each file's fsync let go of the GIL, and the
    export is the last thing a run waits for."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    info: dict[str, dict] = {}
    todo: list[tuple[Table, dict[str, Path]]] = []
    for table in tables(instructions, results, opts):
        paths = {table.stem: out_dir / f"{table.stem}.jsonl"}
        if opts.parquet:
            paths[f"{table.stem}.parquet"] = out_dir / f"{table.stem}.parquet"
        if not table.rows:
            for path in paths.values():
                path.unlink(missing_ok=True)
            continue
        todo.append((table, paths))
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1, 4))) as threads:
        futures = [threads.submit(_write_table, table, paths, opts.parquet) for table, paths in todo]
        for fut in futures:
            fut.result()          # the first error (e.g. ParquetUnavailable, disk full) is raised
    for table, paths in todo:
        written.update(paths)
        if table.dataset_info is not None:
            info[f"autoif_{table.stem}"] = {"file_name": f"{table.stem}.jsonl", **table.dataset_info}
    info_path = out_dir / "dataset_info.json"
    if info:
        _atomic(info_path, lambda fh: fh.write(orjson.dumps(info, option=orjson.OPT_INDENT_2)))
        written["dataset_info"] = info_path
    else:
        info_path.unlink(missing_ok=True)
    return written
