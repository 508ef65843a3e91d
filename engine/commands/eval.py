"""`autoif eval --server URL`: a model's instruction-following score on IFBench's test prompts,
judged with the official IFBench / IFEval checkers (engine.evaluation), prompt- and
instruction-level, strict and loose. With no --server it starts the embedded server.

    autoif eval --server http://127.0.0.1:30000 --output before.json
    autoif eval --limit 20                          # the embedded model, first 20 prompts

The summary goes to stdout; --output writes it as JSON, --responses every answer and verdict
as JSONL. Exit status: 1 when no server answers (one line names them) or a request failed
(the summary line says how many); 2 for a bad flag (one line), before anything is asked.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import orjson

from engine.aio import run as run_async
from engine.commands import flags
from engine.config import Config
from engine.evaluation import Checkers, EvalUnavailable, evaluate, load_ifbench, summarize
from engine.export import write_jsonl
from engine.errors import JobError
from engine.run import check_reachable, make_client
from engine.servers import open_backend
from engine.llm import SamplingParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", action="append", default=[], metavar="URL", type=flags.url,
                        help="the model's server (repeatable); none: start the embedded one")
    parser.add_argument("--api", choices=("auto", "sglang", "openai"), default="auto")
    parser.add_argument("--model", default="default", help="model name sent to the server")
    parser.add_argument("--limit", type=flags.positive_int, default=None, help="only the first N prompts")
    parser.add_argument("--keys", default=None, metavar="K1,K2",
                        help="only the prompts with these keys (IFBench's 'key' field)")
    parser.add_argument("--max-tokens", type=flags.positive_int, default=1024, help="max new tokens per answer")
    parser.add_argument("--temperature", type=flags.number, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--concurrency", type=flags.positive_int, default=32, help="requests in flight")
    parser.add_argument("--request-timeout", type=flags.positive_number, default=600.0)
    parser.add_argument("--output", type=Path, help="write the summary JSON here")
    parser.add_argument("--responses", type=Path, help="write every answer and its verdicts (JSONL)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/eval"),
                        help="where an embedded server keeps its log (default runs/eval)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        checkers = Checkers()
        keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
        prompts = load_ifbench(limit=args.limit, keys=keys)
    except (EvalUnavailable, OSError, ValueError) as exc:
        print(f"autoif eval: {exc}", file=sys.stderr)
        return 1
    cfg = Config.from_flat(servers=list(args.server), api=args.api, model=args.model,
                           max_inflight_requests=args.concurrency, request_timeout_s=args.request_timeout,
                           max_retries=1, output_dir=str(args.run_dir))
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature)

    async def main() -> list:
        verdicts = []
        async with open_backend(cfg, "embedded", args.run_dir) as (urls, api):
            async with make_client(cfg, urls, api) as client:
                await check_reachable(client, urls)     # a dead server: one line, not 0 judged
                async for v in evaluate(client, prompts, checkers, params):
                    verdicts.append(v)
                    print(f"\r{len(verdicts)}/{len(prompts)} answered", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return verdicts

    try:
        verdicts = run_async(main())
    except JobError as exc:
        print(f"autoif eval: {exc}", file=sys.stderr)
        return 1
    summary = summarize(verdicts)
    print(summary.format())
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2))
    if args.responses:
        write_jsonl(args.responses, [v.to_dict() for v in sorted(verdicts, key=lambda v: (len(v.key), v.key))])
    return 1 if summary.failed_requests else 0
