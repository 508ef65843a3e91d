"""Training files from the pipeline's records: SFT and DPO, for LLaMA-Factory and TRL.

SFT: the best kept responses of each (instruction, query) — verified (pass rate above the
threshold) and, when scored, scored at least `score_min`.
DPO, two levels:
- instruction level (from cross-validated test cases): prompt = the instruction,
  chosen = a case input expected True, rejected = one expected False;
- query level: chosen = a response with pass rate >= 0.5, rejected = one with pass rate 0.
Every record carries `provenance` (instruction id, function ids, pass rate, score, model,
config hash). JSONL always; Parquet too when pyarrow imports. Files are written to a temp
name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson

from engine.records import QueryResult, ResponseRecord, VerifiedInstruction

SFT_FORMATS = ("alpaca", "sharegpt", "trl")
DPO_CHOSEN_MIN_PASS = 0.5


@dataclass(frozen=True)
class ExportOptions:
    model: str = ""
    config_hash: str = ""
    score_min: int = 8
    formats: tuple[str, ...] = SFT_FORMATS
    dpo: bool = True
    sft_per_query: int = 1
    dpo_pairs_per_instruction: int = 2
    parquet: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> ExportOptions:
        return cls(model=cfg.model, config_hash=cfg.config_hash(), score_min=cfg.score_min,
                   formats=tuple(cfg.export_formats), dpo=cfg.export_dpo, sft_per_query=cfg.sft_per_query,
                   dpo_pairs_per_instruction=cfg.dpo_pairs_per_instruction, parquet=cfg.parquet)


@dataclass(frozen=True)
class Example:
    """Format-neutral SFT example or DPO pair (rejected is None for SFT)."""

    prompt: str
    chosen: str
    rejected: str | None
    provenance: dict


# ------------------------------------------------------------ selection

def usable(r: ResponseRecord, score_min: int) -> bool:
    """Verified, and not scored below the bar (score None: scoring was off)."""
    return r.passed and (r.score is None or r.score >= score_min)


def _rank(r: ResponseRecord) -> tuple:
    return (r.score or 0, r.pass_rate, -len(r.text))


def _provenance(result: QueryResult, level: str, opts: ExportOptions, **extra: Any) -> dict:
    inst = result.task.instruction
    return {"level": level, "instruction_id": inst.instruction.id, "query_id": result.task.query_id,
            "function_ids": [f.id for f, _ in inst.functions], "model": result.model or opts.model,
            "config_hash": opts.config_hash, **extra}


def sft_examples(results: Iterable[QueryResult], opts: ExportOptions) -> list[Example]:
    out = []
    for result in results:
        best = sorted((r for r in result.responses if usable(r, opts.score_min)), key=_rank, reverse=True)
        for r in best[:opts.sft_per_query]:
            out.append(Example(result.task.prompt, r.text, None,
                               _provenance(result, "sft", opts, pass_rate=r.pass_rate, score=r.score,
                                           response_id=r.id)))
    return out


def query_pairs(results: Iterable[QueryResult], opts: ExportOptions) -> list[Example]:
    out = []
    for result in results:
        chosen = sorted((r for r in result.responses
                         if r.pass_rate >= DPO_CHOSEN_MIN_PASS and usable(r, opts.score_min)),
                        key=_rank, reverse=True)
        rejected = [r for r in result.responses if r.pass_rate == 0 and r.text.strip()]
        if chosen and rejected:
            c, r = chosen[0], rejected[0]
            out.append(Example(result.task.prompt, c.text, r.text,
                               _provenance(result, "query", opts, pass_rate=c.pass_rate, score=c.score,
                                           rejected_pass_rate=r.pass_rate)))
    return out


def instruction_pairs(instructions: Iterable[VerifiedInstruction], opts: ExportOptions) -> list[Example]:
    out, seen = [], set()
    for inst in instructions:
        if inst.instruction.id in seen:
            continue
        seen.add(inst.instruction.id)
        good = [c for c in inst.cases if c.expected]
        bad = [c for c in inst.cases if not c.expected]
        for c, r in list(zip(good, bad))[:opts.dpo_pairs_per_instruction]:
            out.append(Example(inst.instruction.text, c.input, r.input, {
                "level": "instruction", "instruction_id": inst.instruction.id, "query_id": None,
                "function_ids": [f.id for f, _ in inst.functions], "pass_rate": None, "score": None,
                "model": opts.model, "config_hash": opts.config_hash}))
    return out


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


# ------------------------------------------------------------ files

def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    _atomic(path, lambda fh: fh.writelines(orjson.dumps(r) + b"\n" for r in rows))


def pyarrow_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def write_parquet(path: Path, rows: Sequence[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist(list(rows))
    _atomic(path, lambda fh: pq.write_table(table, fh))


def export(out_dir: str | Path, instructions: Iterable[VerifiedInstruction], results: Iterable[QueryResult],
           opts: ExportOptions) -> dict[str, Path]:
    """Write every file; returns {file stem: path}. Empty sets still get (empty) JSONL files."""
    out_dir = Path(out_dir)
    results = list(results)
    files: dict[str, list[dict]] = {}
    sft = sft_examples(results, opts)
    for fmt in opts.formats:
        files[f"sft_{fmt}"] = [SFT_WRITERS[fmt](e) for e in sft]
    if opts.dpo:
        pairs = instruction_pairs(instructions, opts) + query_pairs(results, opts)
        for fmt, writer in DPO_WRITERS.items():
            files[f"dpo_{fmt}"] = [writer(e) for e in pairs]
    parquet = opts.parquet and pyarrow_available()
    written: dict[str, Path] = {}
    for stem, rows in files.items():
        written[stem] = out_dir / f"{stem}.jsonl"
        write_jsonl(written[stem], rows)
        if parquet and rows:
            written[f"{stem}.parquet"] = out_dir / f"{stem}.parquet"
            write_parquet(written[f"{stem}.parquet"], rows)
    return written
