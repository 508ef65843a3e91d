"""Sharding by instruction id (no Ray needed): stable across processes, complete, disjoint, even."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.distributed.sharding import balance, partition, shard_dir, shard_of
from engine.records import Instruction

ROOT = Path(__file__).resolve().parents[3]


def test_same_shard_in_every_process():
    ids = [Instruction(f"Mention the number {i} in your reply.").id for i in range(50)]
    here = [shard_of(i, 7) for i in ids]
    code = ("import sys; from engine.distributed.sharding import shard_of; "
            "print(' '.join(str(shard_of(i, 7)) for i in sys.argv[1:]))")
    for seed in ("1", "2"):                    # str hashing differs per process; shard_of must not
        out = subprocess.run([sys.executable, "-c", code, *ids], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}, check=True)
        assert [int(x) for x in out.stdout.split()] == here


def test_partition_is_complete_disjoint_and_even():
    items = [Instruction(f"Use the word w{i} twice.") for i in range(2000)]
    for n in (1, 2, 3, 8):
        parts = partition(items, n)
        assert len(parts) == n
        flat = [x.id for p in parts for x in p]
        assert sorted(flat) == sorted(x.id for x in items)          # each item exactly once
        for k, p in enumerate(parts):
            assert all(shard_of(x.id, n) == k for x in p)
            # keeps the input order inside a shard (the runner's source order)
            order = [items.index(x) for x in p[:20]]
            assert order == sorted(order)
        assert balance([len(p) for p in parts]) < 1.15              # hash spreads ~evenly


def test_shard_dirs_are_distinct(tmp_path):
    dirs = {shard_dir(tmp_path, i, 4) for i in range(4)}
    assert len(dirs) == 4 and all(d.parent == tmp_path / "shards" for d in dirs)
    assert shard_dir(tmp_path, 1, 4).name == "0001-of-0004"
