"""A full disk while the run's state is written: the storage error itself comes out (for the
job's one line), every record stored before stays readable, and with space again the same
writes complete.

Two ways to fill it: a real small filesystem (a size-limited tmpfs, mounted here when this
process may mount; skipped with the reason otherwise), where SQLite fails the COMMIT that
writes the batch out, and SQLite's own page limit (PRAGMA max_page_count), where an INSERT
fails inside the open transaction. A connection that fails its COMMIT the way SQLite does
(it rolls back first) runs everywhere.
"""
import contextlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from engine.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE, is_storage_failure
from engine.records import Instruction
from engine.state import StateStore
from tests.engine.commands.test_run_resume import _popen, _reap_group, export_records
from tests.engine.commands.test_run_truth import clean_exports, config, inputs, run, simulator  # noqa: F401 (fixtures)

TEXT = "x" * 2000          # a record of ~2 KB: a batch of five fills a few pages


def batch(n: int, size: int = 5) -> list[Instruction]:
    return [Instruction(f"instruction {n}.{i} {TEXT}", source="input") for i in range(size)]


@contextlib.contextmanager
def small_disk(path: Path, kib: int):
    """A tmpfs of `kib` KiB mounted at `path` while the block runs."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    path.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def grow(path: Path, kib: int) -> None:
    """Free space: the same filesystem, larger."""
    subprocess.run(["mount", "-o", f"remount,size={kib}k", str(path)], check=True, capture_output=True)


def fill(store: StateStore, start: int = 0, limit: int = 2000) -> tuple[list[str], int, Exception]:
    """Batches until one fails: (ids stored, the failed batch's number, its error)."""
    stored: list[str] = []
    for n in range(start, start + limit):
        records = batch(n)
        try:
            store.put_records(records, "augment")
        except Exception as exc:           # what a stage's put_records raises to the runner
            return stored, n, exc
        stored += [r.id for r in records]
    raise AssertionError(f"{limit} batches fit: the disk never filled")


def check_failure(store: StateStore, exc: Exception) -> None:
    assert isinstance(exc, sqlite3.OperationalError), repr(exc)
    assert is_storage_failure(exc), exc                  # the job's "cannot write" line, not a crash
    assert "cannot rollback" not in str(exc)
    assert not store._db.in_transaction                # the next write starts clean


def stored_ids(store: StateStore) -> list[str]:
    return sorted(r.id for r in store.iter_records(Instruction, "augment"))


@pytest.mark.parametrize("kib", [96, 160, 256, 512])
def test_commit_on_a_full_filesystem(tmp_path, kib):
    with small_disk(tmp_path / "disk", kib) as disk:
        store = StateStore(disk / "run")
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        stored, failed, exc = fill(store)
        check_failure(store, exc)
        assert statements[-1] == "COMMIT"             # it filled while the batch was written out
        assert stored_ids(store) == sorted(stored)    # every record stored before is readable
        grow(disk, 16 * 1024)
        assert store.put_records(batch(failed), "augment") == 5     # the same write, with space
        store.put_records(batch(failed + 1), "augment")
        store.close()
        with StateStore(disk / "run") as again:      # and it is all there for the next run
            assert stored_ids(again) == sorted(stored + [r.id for n in (failed, failed + 1) for r in batch(n)])


def test_page_limit_inside_a_transaction(tmp_path):
    """The INSERT fails with the transaction open: it is rolled back whole, nothing of it stored."""
    store = StateStore(tmp_path / "run")
    store.put_records(batch(0), "augment")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(sqlite3.OperationalError) as failure:
        store.put_records(batch(1, size=20), "augment")      # ~40 KB: more than two pages
    check_failure(store, failure.value)
    assert stored_ids(store) == sorted(r.id for r in batch(0))
    store._db.execute("PRAGMA max_page_count = 1000000")
    assert store.put_records(batch(1, size=20), "augment") == 20
    store.close()


class FullOnCommit:
    """A connection whose COMMIT fails as on a full disk: SQLite rolls back, then reports."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args):
        if sql == "COMMIT":
            self.db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def test_a_failed_commit_raises_its_own_error(tmp_path):
    store = StateStore(tmp_path / "run")
    store.put_records(batch(0), "augment")
    real, store._db = store._db, FullOnCommit(store._db)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full") as failure:
        store.put_records(batch(1), "augment")
    store._db = real
    check_failure(store, failure.value)
    assert stored_ids(store) == sorted(r.id for r in batch(0))
    assert store.put_records(batch(1), "augment") == 5
    store.close()


# -- the whole job on a small filesystem ----------------------------------------------------

def one_line_failure(proc: subprocess.CompletedProcess) -> str:
    """The run stopped in one line that says why, last; no stack frames, no server blamed."""
    err = proc.stderr
    assert proc.returncode in (EXIT_FAILED, EXIT_USAGE), err[-3000:]
    assert "Traceback" not in err and '  File "' not in err, err[-3000:]
    assert "out of rotation" not in err, err[-3000:]      # the disk, not the server, is at fault
    assert not [line for line in err.splitlines() if line.startswith(("ERROR", "WARNING"))], err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("autoif run:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-3000:]
    if proc.returncode == EXIT_FAILED:         # it filled while running
        assert "cannot write to" in lines[0] and "free space and run the same command again" in lines[0]
    else:                                      # too full to open the run's state at all
        assert "cannot open state.sqlite (database or disk is full)" in lines[0], lines[0]
    return lines[0]


def run_backend_sim(run_dir: Path) -> subprocess.CompletedProcess:
    # ten times the simulator's H100 pace: requests still overlap the stop, in a tenth of the wait
    proc = _popen(["run", "--backend", "sim", "--sim-speed", "10", "--demo", "--output-dir", str(run_dir),
                   "--no-progress"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        _reap_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# 48, 96: too small for the state's first pages; the others fill at different points of the run
@pytest.mark.parametrize("kib", [48, 96, 128, 256, 640])
def test_run_on_a_small_filesystem_stops_in_one_line_and_completes_with_space(
        tmp_path, config, clean_exports, kib):     # noqa: F811 (fixtures)
    with small_disk(tmp_path / "disk", kib) as disk:
        run_dir = disk / "run"
        with simulator("--zero-latency") as (_, url):
            one_line_failure(run(url, config, run_dir))
            grow(disk, 64 * 1024)
            again = run(url, config, run_dir)
        assert again.returncode == EXIT_OK, again.stderr[-3000:]
        assert export_records(run_dir) == clean_exports


@pytest.mark.parametrize("kib", [128, 160, 256])
def test_a_server_in_the_runs_process_is_not_blamed_for_a_full_disk(tmp_path, kib):
    """`--backend sim` serves from the run's own process: requests still in flight when the
    run stops are cut by its shutdown, which is no failure of the server."""
    with small_disk(tmp_path / "disk", kib) as disk:
        one_line_failure(run_backend_sim(disk / "run"))
        grow(disk, 64 * 1024)
        again = run_backend_sim(disk / "run")
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
