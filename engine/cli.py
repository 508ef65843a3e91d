"""`autoif` command line: one subcommand per module, each exposing add_arguments() and run()."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

from engine.commands.flags import Parser

# subcommand -> (module, one-line help). Each module defines
#   add_arguments(parser: argparse.ArgumentParser) -> None
#   run(args: argparse.Namespace) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("engine.commands.run", "run the AutoIF pipeline end to end"),
    "stage": ("engine.commands.stage", "run one stage alone on AutoIF's reference JSONL formats"),
    "report": ("engine.commands.report", "charts and an HTML page of a run (funnel, throughput, queues, histograms)"),
    "serve": ("engine.commands.serve", "start an LLM server (llama.cpp or SGLang) and keep it up"),
    "serve-reward": ("engine.commands.serve_reward", "serve a run's verified instructions as an RL reward (OpenRLHF, NeMo Gym, TRL, verl)"),
    "eval": ("engine.commands.eval", "a model's instruction-following score on IFBench's test prompts (official checkers)"),
    "sim": ("engine.commands.sim", "start the SGLang protocol simulator (a test double of SGLang's HTTP server)"),
}


def _version() -> str:
    try:
        return importlib.metadata.version("autoif-engine")
    except importlib.metadata.PackageNotFoundError:   # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="autoif", description=__doc__)   # a bad flag: one line, exit 2
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a subcommand whose module is not built in this install
            if exc.name and module_name.startswith(exc.name):
                sp.set_defaults(_missing=f"'{name}' is not available in this build ({exc})")
                continue
            raise
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"autoif: {args._missing}", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("autoif: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
