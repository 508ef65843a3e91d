"""`autoif serve`: start LLM server(s) under the manager, print their URLs, keep them up until
Ctrl-C (or SIGTERM), then stop them cleanly.

    autoif serve                                   # embedded llama.cpp + Qwen2.5-Coder-0.5B-Instruct, 8 slots
    autoif serve --backend sglang --model M --tp 2 --replicas 4 -- --context-length 8192

URLs go to stdout, one per line (for scripts); progress and errors go to stderr.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from engine.commands import flags
from engine.servers import BACKENDS, ServerError, build_group


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="llamacpp",
                        help="llamacpp (embedded CPU default), sglang (GPU), sim (protocol simulator)")
    parser.add_argument("--model", help="model path (GGUF for llamacpp, HF id or path for sglang); "
                        "llamacpp defaults to the embedded Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--parallel", type=flags.positive_int, default=8, help="llama.cpp parallel slots (default 8)")
    parser.add_argument("--tp", type=flags.positive_int, default=1, help="SGLang tensor parallelism (GPUs per replica)")
    parser.add_argument("--port", type=flags.port, help="port of the first replica (default: free ports)")
    parser.add_argument("--mem-fraction", type=flags.positive_number, help="SGLang --mem-fraction-static")
    parser.add_argument("--replicas", type=flags.positive_int, default=1, help="number of servers (ports port..port+R-1)")
    parser.add_argument("--run-dir", default=None, help="where server logs go (default runs/serve-<time>)")
    parser.add_argument("--max-restarts", type=flags.non_negative_int, default=3, help="restarts after crashes before giving up")
    parser.add_argument("--startup-timeout", type=flags.positive_number, default=None, help="seconds to wait for health")
    parser.add_argument("--stream-log", action="store_true", help="copy server logs to stderr")
    parser.add_argument("extra", nargs="*", metavar="-- EXTRA",
                        help="extra arguments passed to the server, after --")


def _interrupt(signum, frame):  # noqa: ARG001 -- SIGTERM stops as cleanly as Ctrl-C
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.port is not None and args.port + args.replicas - 1 > flags.PORT_MAX:
        return flags.fail("serve", "--port", args.port,
                          f"{args.replicas} replicas need ports up to {args.port + args.replicas - 1}, "
                          f"past {flags.PORT_MAX}")
    extra = list(args.extra or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    run_dir = Path(args.run_dir or f"runs/serve-{time.strftime('%Y%m%d-%H%M%S')}")
    kw = dict(model=args.model, parallel=args.parallel, tp=args.tp, mem_fraction=args.mem_fraction,
              extra=extra, max_restarts=args.max_restarts, stream_log=args.stream_log)
    if args.startup_timeout is not None:
        kw["startup_timeout"] = args.startup_timeout
    # Both explicitly: a shell starts background jobs with SIGINT ignored, and Python then
    # would not turn it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        group = build_group(args.backend, run_dir, replicas=args.replicas, port=args.port, **kw)
        print(f"autoif serve: starting {args.replicas} {args.backend} server(s); logs in {run_dir}",
              file=sys.stderr, flush=True)
        group.start_sync()
    except ServerError as exc:
        print(f"autoif serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoif serve: interrupted during startup", file=sys.stderr)
        return 130
    try:
        for srv in group.servers:
            print(f"autoif serve: {srv.name} ready at {srv.url} (pid {srv.pid}, api {srv.api}, "
                  f"log {srv.log_path})", file=sys.stderr)
        print("\n".join(group.urls), flush=True)
        print("autoif serve: press Ctrl-C to stop", file=sys.stderr, flush=True)
        while not group.failed:
            time.sleep(0.5)
        for srv in group.servers:
            print(f"autoif serve: {srv.error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        group.stop_sync()
        print("autoif serve: stopped", file=sys.stderr, flush=True)
