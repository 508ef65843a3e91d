"""The end of a run: exports from the store, the summary file, and storage failures as one line."""
from __future__ import annotations

import contextlib
import shlex
from collections import Counter
import sqlite3
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson

from engine.config import Config
from engine.errors import JobError
from engine.export import ExportOptions, count_precision, export, write_jsonl
from engine.grpo import GrpoOptions, GrpoSummary, export_grpo
from engine.outcome import is_storage_failure
from engine.progress import print_funnel
from engine.records import QueryResult
from engine.run.store import RunStore
from engine.stage import Funnel


def export_options(cfg: Config, store: RunStore) -> ExportOptions:
    return replace(ExportOptions.from_config(cfg), model=store.model_name(cfg), models=store.model_names(cfg))


def export_run(cfg: Config, store: RunStore, out_dir: Path, results: list[QueryResult] | None = None,
               funnel: Funnel | None = None) -> dict:
    """The SFT and DPO files from the store's verified instructions and `results` (None: the
    store's final results), in id order: the same records give the same bytes, whatever order
    the run finished them in (workers, timing, a resume). `funnel`: gets precision mode's row."""
    results = sorted(store.results() if results is None else results, key=_result_key)
    opts = export_options(cfg, store)
    if funnel is not None:
        count_precision(results, opts, funnel)
    files = export(out_dir, sorted(store.verified(), key=lambda v: v.id), results, opts)
    if cfg.compose.enabled:
        # the pairs never composed, as IF-RLVR keeps its conflict dictionary
        path = out_dir / "conflicts.jsonl"
        write_jsonl(path, [c.to_dict() for c in sorted(store.conflicts(), key=lambda c: c.id)])
        files["conflicts"] = path
    return files


def coverage(store: RunStore, results: list[QueryResult] | None = None) -> dict:
    """What a composing run covers: verified instructions per family, final results per number of
    constraints in their prompt, and the conflicting pairs found."""
    families = Counter(v.family or "unassigned" for v in {v.instruction.id: v for v in store.verified()}.values())
    sizes = Counter(len(r.task.constraints) for r in (store.results() if results is None else results))
    return {"families": dict(families.most_common()), "results_by_constraints": dict(sorted(sizes.items())),
            "conflicts": sum(1 for _ in store.conflicts())}


def _result_key(result: QueryResult) -> str:
    return result.id


def export_grpo_run(cfg: Config, store: RunStore, out_dir: Path, funnel: Funnel) -> GrpoSummary:
    """The GRPO prompt files from every graded prompt, in id order; the share of mixed prompts goes in the funnel."""
    opts = replace(GrpoOptions.from_config(cfg), model=store.model_name(cfg))
    grpo = export_grpo(out_dir, sorted(store.sampled(), key=lambda s: s.id), opts)
    grpo.count(funnel)
    return grpo


def run_start() -> dict:
    """When and how this run was started, taken as it starts, for its summary and report."""
    return {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": shlex.join(["autoif", *sys.argv[1:]])}


def write_summary(run_dir: Path, name: str, summary: dict, funnel: Funnel) -> None:
    path = run_dir / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                                 default=str))
    tmp.replace(path)
    print(file=sys.stderr)
    print_funnel(funnel.to_dict(), sys.stderr)
    print(f"wall {summary['wall_s']:.1f}s; summary: {path}", file=sys.stderr)
    # the closing lines (what was lost, what to do) come last: outcome.finish(), after shutdown


def stopped_by_storage(summary: dict, run_dir: Path) -> None:
    if summary.get("stopped") == "failed":
        raise JobError(f"stopped: cannot write to {run_dir} ({summary.get('failure')}); every "
                       "record stored before is kept: free space and run the same command again")


@contextlib.contextmanager
def storage_errors(run_dir: Path):
    """Disk full (or read-only) while writing exports or the summary: one line, not a traceback.
    Exports are written to a temporary name and renamed, so older files stay whole."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        if not is_storage_failure(exc) and not isinstance(exc, PermissionError):
            raise
        raise JobError(f"cannot write to {run_dir} ({exc}); every record stored before is kept: "
                       "free space and run the same command again") from None
