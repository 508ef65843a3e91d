"""How a run is cut into shards, and where each shard keeps its state.

The unit of sharding is the instruction: everything after augmentation (verifiers, cross-
validation, back-translation, queries, responses, scores) depends on one instruction alone, so
instruction `i` goes to shard `shard_of(i.id, n)` and no shard needs another's data. The id is
a content hash (engine.records.content_id), so the assignment is the same on every node and on
every rerun; that is what makes resume work per shard.

Layout of a sharded run directory (it must be on a filesystem every node mounts):

    RUN_DIR/state.sqlite                       the driver: merged records, funnel, config hash
    RUN_DIR/shards/augment/state.sqlite        stage 1 (augment), run once, by shard 0's actor
    RUN_DIR/shards/0000-of-0002/state.sqlite   shard 0: its LLM answer cache, its records
    RUN_DIR/shards/0001-of-0002/state.sqlite   shard 1
    RUN_DIR/exports/, RUN_DIR/summary.json     written by the driver, as in a single-node run

Every SQLite file has exactly one writer (one process), so no file is shared between nodes
for writing, which SQLite over NFS does not support.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

T = TypeVar("T")

SHARDS_DIR = "shards"
AUGMENT_DIR = "augment"


def shard_of(record_id: str, n_shards: int) -> int:
    """The shard of an id: stable across processes, nodes and Python versions (no hash())."""
    if n_shards < 1:
        raise ValueError("n_shards must be at least 1")
    digest = hashlib.sha256(record_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def partition(items: Iterable[T], n_shards: int, key=lambda item: item.id) -> list[list[T]]:
    """Items split by shard_of(key(item)); the order inside a shard is the input order."""
    out: list[list[T]] = [[] for _ in range(n_shards)]
    for item in items:
        out[shard_of(key(item), n_shards)].append(item)
    return out


def shard_name(index: int, n_shards: int) -> str:
    return f"{index:04d}-of-{n_shards:04d}"


def shard_dir(run_dir: str | Path, index: int, n_shards: int) -> Path:
    return Path(run_dir) / SHARDS_DIR / shard_name(index, n_shards)


def augment_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SHARDS_DIR / AUGMENT_DIR


def existing_shard_counts(run_dir: str | Path) -> set[int]:
    """The shard counts a run directory was already cut into (from the shard folder names)."""
    root = Path(run_dir) / SHARDS_DIR
    counts = set()
    if root.is_dir():
        for p in root.iterdir():
            parts = p.name.split("-of-")
            if len(parts) == 2 and parts[1].isdigit():
                counts.add(int(parts[1]))
    return counts


def balance(sizes: Sequence[int]) -> float:
    """Largest shard over the mean (1.0: perfectly even)."""
    if not sizes or not sum(sizes):
        return 1.0
    return max(sizes) / (sum(sizes) / len(sizes))
