"""`autoif report RUN_DIR`: charts of a finished (or stopped) run as PNGs and one HTML page.

    autoif report runs/demo              # -> runs/demo/report/report.html + *.png
    autoif report runs/demo --out /tmp/r

The page is one file with its images embedded (send it, open it anywhere). Needs the
`report` extra (matplotlib).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (its summary.json)")
    parser.add_argument("--out", default=None, help="where the page and PNGs go (default RUN_DIR/report)")


def run(args: argparse.Namespace) -> int:
    try:
        from engine.report.html import ReportError, make_report
    except ImportError as exc:  # matplotlib missing
        print(f"autoif report: needs matplotlib (pip install 'autoif-engine[report]'): {exc}",
              file=sys.stderr)
        return 2
    try:
        made = make_report(args.run_dir, args.out)
    except ReportError as exc:
        print(f"autoif report: {exc}", file=sys.stderr)
        return 1
    for name, path in made["pngs"].items():
        print(f"{name}: {path}", file=sys.stderr)
    print(made["html"])
    return 0
