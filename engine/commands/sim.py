"""`autoif sim`: run the SGLang protocol simulator (a test double of SGLang's HTTP server)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from engine.aio import run as aio_run
from engine.commands import flags
from engine.sim.config import FaultConfig, LatencyModel, SimConfig
from engine.sim.server import SimServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", type=flags.host, default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=flags.port_or_free, default=30000, help="0 picks a free port")
    parser.add_argument("--model", default="sim-model", help="served model name")
    parser.add_argument("--responder", default="echo",
                        help="echo | random[:SEED] | autoif | FILE.jsonl | MODULE:FUNC")
    lat = parser.add_argument_group("latency model")
    lat.add_argument("--max-running", type=int, default=256)
    lat.add_argument("--prefill-tps", type=float, default=20_000.0)
    lat.add_argument("--decode-base-ms", type=float, default=15.0)
    lat.add_argument("--decode-per-req-ms", type=float, default=20.0 / 255)
    lat.add_argument("--speed", type=float, default=1.0, help="divide all delays by this")
    lat.add_argument("--zero-latency", action="store_true", help="answer at once (benchmarks)")
    flt = parser.add_argument_group("fault injection")
    flt.add_argument("--fail-rate", type=float, default=0.0, help="fraction answered 503")
    flt.add_argument("--drop-rate", type=float, default=0.0, help="fraction of connections cut")
    flt.add_argument("--stream-error-rate", type=float, default=0.0)
    flt.add_argument("--slow-first-token-rate", type=float, default=0.0)
    flt.add_argument("--slow-first-token-s", type=float, default=2.0)
    flt.add_argument("--outage-at", type=float, default=None, help="go down after S seconds")
    flt.add_argument("--outage-for", type=float, default=5.0)
    flt.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-n", action="store_true", help="reject n>1 like llama-server")
    parser.add_argument("--log-level", default="WARNING")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        host=args.host, port=args.port, model=args.model, responder=args.responder,
        allow_n=not args.no_n,
        latency=LatencyModel(max_running=args.max_running, prefill_tps=args.prefill_tps,
                             decode_base_ms=args.decode_base_ms,
                             decode_per_req_ms=args.decode_per_req_ms, speed=args.speed,
                             zero_latency=args.zero_latency),
        faults=FaultConfig(fail_rate=args.fail_rate, drop_rate=args.drop_rate,
                           stream_error_rate=args.stream_error_rate,
                           slow_first_token_rate=args.slow_first_token_rate,
                           slow_first_token_s=args.slow_first_token_s,
                           outage_at=args.outage_at, outage_for=args.outage_for, seed=args.seed),
    )


async def serve(config: SimConfig) -> None:
    async with SimServer(config) as sim:
        print(f"SGLang simulator (test double) listening on {sim.url}", flush=True)
        await asyncio.Event().wait()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = config_from_args(args)
    try:
        aio_run(serve(config))
    except KeyboardInterrupt:
        print("simulator stopped", file=sys.stderr)
    return 0
