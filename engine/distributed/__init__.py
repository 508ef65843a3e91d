"""Scale-out on Ray: `autoif run --ray [ADDRESS]` (pip extra `ray`).

sharding.py: instructions -> shards by id, and where each shard keeps its state;
worker.py:   one shard's engine (the phases as event streams) and the Ray actor around it;
driver.py:   starts the actors, streams their records back, merges funnels, exports.
Nothing here imports Ray until a sharded run starts.
"""
from __future__ import annotations

import argparse
import asyncio
import shlex
import sys

from engine.commands import flags
from engine.distributed.driver import run_sharded
from engine.job import JobError
from engine.outcome import finish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `autoif run` flags of a sharded run."""
    g = parser.add_argument_group("scale-out on Ray (pip extra `ray`)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run sharded on a Ray cluster: ADDRESS (e.g. HEAD:6379), or none for "
                        "RAY_ADDRESS / the cluster `ray start` made here / a new local one")
    g.add_argument("--shards", type=flags.positive_int, default=None,
                   help="shards (one engine actor each); default: one per Ray node. Resume with the same number")
    g.add_argument("--shard-cpus", type=float, default=1.0, help="Ray CPUs reserved per shard actor")
    g.add_argument("--shard-gpus", type=float, default=0.0, help="Ray GPUs reserved per shard actor")
    g.add_argument("--node-serve", choices=("llamacpp", "sglang", "sim"), default=None,
                   help="start `autoif serve --backend B` once on each node that runs shards "
                        "(with the node's GPUs), and use it there")
    g.add_argument("--node-serve-args", default="", metavar="'ARGS'",
                   help="more `autoif serve` arguments, one string (e.g. \"--model M --tp 2\")")
    g.add_argument("--max-shard-restarts", type=flags.non_negative_int, default=3,
                   help="times a shard is started again on a new actor after its actor died")


def run_ray(cfg, args: argparse.Namespace) -> int:
    """`autoif run --ray ...`: the sharded job; 0 when it completed."""
    if getattr(args, "mode", "full") != "full":
        print("autoif run: --ray runs --mode full only", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run_sharded(
            cfg, shards=args.shards, backend=args.backend, demo=args.demo,
            address=args.ray or None, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
            progress=not args.no_progress, shard_cpus=args.shard_cpus, shard_gpus=args.shard_gpus,
            node_serve=args.node_serve, node_serve_args=shlex.split(args.node_serve_args or ""),
            max_restarts=args.max_shard_restarts))
    except JobError as exc:
        print(f"autoif run: {exc}", file=sys.stderr)
        return exc.exit_code
    return finish(result)
