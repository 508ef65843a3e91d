"""What a run checks before any work: its inputs, Parquet, and the output directory.
Anything refused here is one line, and nothing has been written yet."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from engine.config import Config
from engine.errors import RefusedError
from engine.export import pyarrow_available
from engine.records import Instruction, Query
from engine.stages import load_queries, load_seed_instructions

log = logging.getLogger("autoif.job")


def load_inputs(cfg: Config) -> tuple[list[Instruction], list[Query]]:
    """Seed instructions and queries, read in full before anything starts.

    Bad lines are skipped with a warning while they are at most `max_bad_input_share` of a
    file; more than that (or no usable line at all) refuses the run in one line.
    """
    def read(what: str, path: str, loader):
        bad: list[str] = []
        try:
            items = loader(path or None, on_error=bad.append)
        except OSError as exc:
            raise RefusedError(f"{what} {path}: {exc.strerror or exc}") from None
        total = len(items) + len(bad)        # distinct usable lines plus bad ones (a lower bound)
        if bad and (not items or len(bad) > cfg.run.max_bad_input_share * total):
            raise RefusedError(f"{what} {path}: {len(bad)} of {total} lines are bad (more than "
                               f"--max-bad-input-share {cfg.run.max_bad_input_share:g}); first: {bad[0]}")
        if not items:
            raise RefusedError(f"{what} {path or '(built-in)'}: no usable lines")
        if bad:
            log.warning("%s %s: skipped %d bad line(s), e.g. %s", what, path, len(bad), bad[0])
        return items

    return (read("seed instructions", cfg.run.seeds_path, load_seed_instructions),
            read("queries", cfg.run.queries_path, load_queries))


def preflight(cfg: Config, run_dir: Path) -> tuple[list[Instruction], list[Query]]:
    """Everything that can be refused before any work: inputs, Parquet, the output directory.
    Returns (seeds, queries)."""
    seeds, queries = load_inputs(cfg)
    if cfg.export.parquet and not pyarrow_available():
        raise RefusedError("Parquet exports need pyarrow (pip install pyarrow); "
                           "or write JSONL only with --no-parquet")
    check_output_dir(run_dir)
    return seeds, queries


def check_output_dir(run_dir: Path) -> None:
    """The run directory exists (or is created) and takes a file; else one line, before any work."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RefusedError(f"--output-dir {run_dir} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RefusedError(f"--output-dir {run_dir}: cannot create it ({exc.strerror or exc})") from None
    for d in (run_dir, run_dir / "exports"):
        if d.is_dir():
            try:
                fd, probe = tempfile.mkstemp(dir=d, prefix=".autoif-write-check-")
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise RefusedError(f"--output-dir {d} cannot be written ({exc.strerror or exc})") from None
