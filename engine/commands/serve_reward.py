"""`autoif serve-reward RUN_DIR`: a run's verified instructions as a reward service for RL
trainers (OpenRLHF /get_reward, NeMo Gym /verify, the native /score that the TRL and verl
adapters use), verifying every completion in the sandbox pool. GET /health and GET /metrics
(Prometheus) count what it scored and what it refused, by reason.

The URL goes to stdout once the socket listens (for scripts); logs go to stderr.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from engine.aio import run as run_async
from engine.commands import flags
from engine.outcome import is_bind_failure
from engine.reward.adapters import ENV_KEY
from engine.reward.scorer import COMBINE_MODES, REWARD_MODES, RewardSettings, RewardTable, table_summary
from engine.reward.service import ServiceOptions, serve
from sandbox_pool import Limits, PoolConfig, SandboxPool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of `autoif run`")
    parser.add_argument("--host", type=flags.host, default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=flags.port_or_free, default=8000, help="port (default 8000; 0: a free one)")
    parser.add_argument("--api-key", default=os.environ.get(ENV_KEY),
                        help=f"require this key (Bearer header or ?api_key=); default ${ENV_KEY}")
    parser.add_argument("--reward", choices=REWARD_MODES, default="rate",
                        help="rate: weighted pass rate over the functions; binary: 1 above --threshold")
    parser.add_argument("--combine", choices=COMBINE_MODES, default="fraction",
                        help="reward of a completion labelled with a list of instruction ids (a composed prompt): "
                             "the fraction of its constraints met, or 1 only when all are (default fraction)")
    parser.add_argument("--threshold", type=flags.number, default=0.5,
                        help="binary reward: 1.0 when the pass rate is MORE than this (default 0.5)")
    parser.add_argument("--max-batch", type=flags.positive_int, default=1024, help="completions per request (default 1024)")
    parser.add_argument("--max-chars", type=flags.positive_int, default=262_144,
                        help="characters per completion (default 262144)")
    parser.add_argument("--max-body-mb", type=flags.positive_number, default=64.0, help="request body limit (default 64)")
    parser.add_argument("--pool-workers", type=flags.non_negative_int, default=0, help="sandbox workers (0: one per core)")
    parser.add_argument("--pool-timeout", type=flags.positive_number, default=2.0,
                        help="seconds one function may take over one request's completions (default 2)")
    parser.add_argument("--pool-memory-mb", type=flags.positive_int, default=512, help="memory limit of a sandbox worker")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table = RewardTable.from_run(args.run_dir)
        settings = RewardSettings(mode=args.reward, threshold=args.threshold, combine=args.combine,
                                  max_batch=args.max_batch, max_chars=args.max_chars)
    except (OSError, ValueError) as exc:
        print(f"autoif serve-reward: {exc}", file=sys.stderr)
        return 1
    if not len(table):
        print(f"autoif serve-reward: {args.run_dir} has no verified instructions", file=sys.stderr)
        return 1
    options = ServiceOptions(host=args.host, port=args.port, api_key=args.api_key,
                             max_body_mb=args.max_body_mb)

    def ready(url: str) -> None:
        print(url, flush=True)
        facts = table_summary(table)
        print(f"serving rewards for {facts['instructions']} instructions ({facts['functions']} "
              f"functions, {facts['flagged']} flagged by the audit) at {url}: POST /score, "
              "/get_reward (OpenRLHF), /verify (NeMo Gym); GET /health, /metrics",
              file=sys.stderr, flush=True)

    async def main() -> None:
        async with SandboxPool(PoolConfig(workers=args.pool_workers or None,
                                          limits=Limits(timeout_s=args.pool_timeout,
                                                        memory_mb=args.pool_memory_mb))) as pool:
            await serve(table, pool, settings, options, ready)

    try:
        run_async(main())
    except OSError as exc:
        if not is_bind_failure(exc):
            raise
        return flags.fail("serve-reward", "--host/--port", f"{args.host}:{args.port}",
                          f"cannot listen ({os.strerror(exc.errno)})")
    return 0
