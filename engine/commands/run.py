"""`autoif run`: the whole AutoIF pipeline as one streaming job, resumable from its run directory.

Where the answers come from (first that applies):
  --server URL (repeat for several) / `servers` in the config: servers you already run;
  --backend sim: the built-in SGLang simulator (a test double) with AutoIF-shaped answers;
  otherwise: the embedded llama.cpp server with its small model (pip extra `embedded`).

The job itself is assembled and run by `engine.job`; this module is only its argparse layer.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from typing import Any, Coroutine

from engine.aio import install_uvloop, tune_gc
from engine.commands import flags
from engine.config import Config, ConfigError, add_config_arguments, config_from_args
from engine.demo import DEMO
from engine.errors import JobError
from engine.job import run_job
from engine.outcome import EXIT_CODES_HELP, EXIT_USAGE, finish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_CODES_HELP
    parser.add_argument("--backend", choices=("embedded", "sim"), default="embedded",
                        help="server to start when no --server is given (default: embedded llama.cpp)")
    parser.add_argument("--demo", action="store_true",
                        help="a small job: a few seed instructions and queries, small K and N")
    parser.add_argument("--mode", choices=("full", "online-dpo"), default="full",
                        help="online-dpo: repeat responses/scoring/export against the policy server")
    parser.add_argument("--rounds", type=flags.positive_int, default=1, help="online-dpo rounds (default: 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--metrics-port", type=flags.port, default=None,
                        help="serve Prometheus metrics on --metrics-host:PORT while running (default: off)")
    parser.add_argument("--metrics-host", type=flags.host, default="127.0.0.1", metavar="HOST",
                        help="address the metrics server binds (default: 127.0.0.1; 0.0.0.0: every interface)")
    parser.add_argument("--metrics-keep", type=flags.number, default=0.0, metavar="SECONDS",
                        help="after the run, keep serving its final metrics this long; -1: until "
                             "Ctrl-C (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    add_ray_arguments(parser)
    add_config_arguments(parser)
    flags.check_with(parser, "servers", flags.url)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a sharded run (engine.distributed.RayOptions)."""
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


def ray_job(cfg: Config, args: argparse.Namespace) -> Coroutine[Any, Any, dict]:
    """`autoif run --ray ...`: the sharded job."""
    from engine.distributed import RayOptions, run_sharded
    ray = RayOptions(address=args.ray or None, shards=args.shards, shard_cpus=args.shard_cpus,
                     shard_gpus=args.shard_gpus, node_serve=args.node_serve,
                     node_serve_args=tuple(shlex.split(args.node_serve_args or "")),
                     max_restarts=args.max_shard_restarts)
    return run_sharded(cfg, ray, backend=args.backend, demo=args.demo, metrics_port=args.metrics_port,
                       metrics_host=args.metrics_host, progress=not args.no_progress)


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = config_from_args(args)
    if args.demo:
        given = {k for k in DEMO if hasattr(args, k)}  # explicit flags still win over the demo sizes
        cfg = cfg.replace_flat(**{k: v for k, v in DEMO.items() if k not in given})
    return cfg


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"autoif run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        print(cfg.dump())
        return 0
    if args.ray is not None:                  # sharded over a Ray cluster
        if args.mode != "full":
            print("autoif run: --ray runs --mode full only", file=sys.stderr)
            return EXIT_USAGE
        job = ray_job(cfg, args)
    else:
        install_uvloop()
        tune_gc()
        job = run_job(cfg, backend=args.backend, mode=args.mode, rounds=args.rounds, demo=args.demo,
                      metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                      metrics_keep_s=args.metrics_keep, progress=not args.no_progress)
    try:
        result = asyncio.run(job)
    except JobError as exc:
        print(f"autoif run: {exc}", file=sys.stderr)
        return exc.exit_code
    return finish(result)
