"""The run's persistent state: one SQLite database (WAL) in the run directory.

- llm_cache: LLM answers by request hash (engine.cache.CachedLLM), so a resumed run re-asks nothing;
- records: final records by deterministic id, INSERT OR IGNORE, so nothing is stored twice;
- funnel: snapshots of the funnel counts at the end of each run;
- meta: small key/values (config hash, model).

A resumed run does not skip stages: it runs every item through them again, and every LLM call
is answered from llm_cache at once while sandbox checks run again (they are cheap and
deterministic), so it ends with the same records.

Calls are short synchronous statements; a lock makes one store safe to share between the
event loop and worker threads.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import orjson

from engine.records import BY_INSTRUCTION_ID, RECORD_TYPES, VerifiedInstruction, record_from_dict

DB_NAME = "state.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, stage TEXT NOT NULL, data BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_kind ON records (kind, stage);
CREATE TABLE IF NOT EXISTS funnel (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StateStore:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / DB_NAME
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._last_created = 0.0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")    # WAL + NORMAL: durable at checkpoints, fast
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ LLM cache

    def cache_get(self, key: str) -> Any | None:
        rows = self._all("SELECT value FROM llm_cache WHERE key = ?", (key,))
        return orjson.loads(rows[0][0]) if rows else None

    def cache_put(self, key: str, value: Any) -> None:
        self._exec("INSERT OR REPLACE INTO llm_cache (key, value, created) VALUES (?, ?, ?)",
                   (key, orjson.dumps(value), time.time()))

    def cache_size(self) -> int:
        return self._all("SELECT COUNT(*) FROM llm_cache")[0][0]

    # ------------------------------------------------------------ records

    def put_record(self, record: Any, stage: str) -> bool:
        """Store a record under its deterministic id; False when it was already there."""
        cur = self._exec(
            "INSERT OR IGNORE INTO records (id, kind, stage, data, created) VALUES (?, ?, ?, ?, ?)",
            (record.id, type(record).__name__, stage, orjson.dumps(record.to_dict()), time.time()))
        return cur.rowcount == 1

    def put_records(self, records: list[Any], stage: str) -> int:
        """Several records in one transaction; returns how many were new."""
        # Strictly increasing within a process, so records come back (ORDER BY created) in the
        # order they were put, as a run that exports what it holds in memory has them.
        now = self._last_created = max(time.time(), self._last_created + 1e-6)
        rows = [(r.id, type(r).__name__, stage, orjson.dumps(r.to_dict()), now) for r in records]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO records (id, kind, stage, data, created) VALUES (?, ?, ?, ?, ?)", rows)
                added = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                # A COMMIT that fails on a full disk has rolled back already; a second ROLLBACK
                # would raise "no transaction is active" and hide the storage error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return added

    def iter_records(self, kind: str | type, stage: str | None = None) -> Iterator[Any]:
        """Records of one kind (class or its name), oldest first, rebuilt as dataclasses.
        A task names its verified instruction by id: it is looked up among the stored ones."""
        name = kind if isinstance(kind, str) else kind.__name__
        if name not in RECORD_TYPES:
            raise KeyError(name)
        instructions = ({v.id: v for v in self.iter_records(VerifiedInstruction)}
                        if name in BY_INSTRUCTION_ID else None)
        sql = "SELECT data FROM records WHERE kind = ?" + (" AND stage = ?" if stage else "") + " ORDER BY created, id"
        for (data,) in self._all(sql, (name, stage) if stage else (name,)):
            yield record_from_dict(name, orjson.loads(data), instructions)

    def count_records(self, kind: str | type | None = None, stage: str | None = None) -> int:
        if kind is None:
            return self._all("SELECT COUNT(*) FROM records")[0][0]
        name = kind if isinstance(kind, str) else kind.__name__
        if stage is not None:
            return self._all("SELECT COUNT(*) FROM records WHERE kind = ? AND stage = ?", (name, stage))[0][0]
        return self._all("SELECT COUNT(*) FROM records WHERE kind = ?", (name,))[0][0]

    # ------------------------------------------------------------ funnel and meta

    def save_funnel(self, snapshot: dict) -> None:
        self._exec("INSERT INTO funnel (at, data) VALUES (?, ?)", (time.time(), orjson.dumps(snapshot)))

    def set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        rows = self._all("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None
