"""Live progress: requests/s, tokens/s, pool checks/s, per-stage counts and rates, an ETA.

Rates come from deltas of cumulative counters read through `probe()` each tick, so the
reporter needs no hooks inside the client or the pool. Display is rich's (not hand-drawn
escape codes): on a terminal a live table redrawn in place that fits the terminal's width;
otherwise (logs, CI) one plain line at the first tick and then every `log_every_s`. Every
tick also samples the run's time series, shown or not.
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import Callable, Mapping, TextIO

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine.metrics import TimeSeries
from engine.outcome import ERROR_PREFIX
from engine.runner import StreamRunner


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.1f}"


def _fmt_dur(s: float | None) -> str:
    if s is None or s != s or s == float("inf"):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _split_drops(row: Mapping) -> tuple[int, int]:
    """(dropped on merit, lost to errors) of one funnel row."""
    lost = sum(n for r, n in row.get("dropped", {}).items() if r.startswith(ERROR_PREFIX))
    return sum(row.get("dropped", {}).values()) - lost, lost


def funnel_table(funnel: Mapping[str, Mapping], title: str | None = "funnel") -> Table:
    """The funnel as a table: per stage in / kept / out and drops by reason (errors in red)."""
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("stage", no_wrap=True)
    for col in ("in", "kept", "out"):
        table.add_column(col, justify="right")
    table.add_column("dropped (reason=n)", overflow="fold")
    for stage, row in funnel.items():
        why = Text()
        for i, (reason, n) in enumerate(row.get("dropped", {}).items()):
            why.append(", " if i else "")
            why.append(f"{reason}={n}", style="bold red" if reason.startswith(ERROR_PREFIX) else "")
        table.add_row(Text(stage, style="dim" if "." in stage else "bold"), str(row.get("in", 0)),
                      str(row.get("kept", 0)), str(row.get("out", 0)), why if why else Text("-"))
    return table


def print_funnel(funnel: Mapping[str, Mapping], stream: TextIO | None = None) -> None:
    """On a terminal as wide as it is; in a log wide enough that a row stays one line."""
    console = Console(file=stream or sys.stderr, highlight=False)
    if not console.is_terminal:
        console = Console(file=stream or sys.stderr, highlight=False, width=max(console.width, 160))
    console.print(funnel_table(funnel))


class Progress:
    """probe() returns cumulative counters: requests, completion_tokens, checks, pool_busy_s."""

    def __init__(self, runner: StreamRunner, probe: Callable[[], dict], *,
                 stream: TextIO | None = None, interval_s: float = 1.0,
                 log_every_s: float = 10.0, series: TimeSeries | None = None,
                 pool_workers: int = 1, console: Console | None = None) -> None:
        self.runner = runner
        self.probe = probe
        self.console = console or Console(file=stream or sys.stderr, highlight=False)
        self.stream = self.console.file
        self.interval_s = interval_s
        self.log_every_s = log_every_s
        self.series = series
        self.pool_workers = max(1, pool_workers)
        self.tty = self.console.is_terminal
        self._prev: dict = {}
        self._prev_t = 0.0
        self._t0 = time.monotonic()
        self._last_log = -float("inf")
        self.last_line = ""
        self.window_s = 10.0
        self._window: deque[tuple[float, dict, list[int]]] = deque()
        self._live: Live | None = None

    def snapshot(self) -> dict:
        """Current rates and depths (also what the time series records)."""
        now = time.monotonic()
        cur = dict(self.probe())
        dt = max(now - self._prev_t, 1e-9) if self._prev else None
        rate = (lambda k: (cur.get(k, 0) - self._prev.get(k, 0)) / dt) if dt else (lambda k: 0.0)
        snap = {
            "req_s": rate("requests"), "tok_s": rate("completion_tokens"), "chk_s": rate("checks"),
            "pool_busy": min(1.0, rate("pool_busy_s") / self.pool_workers) if dt else 0.0,
            "queues": self.runner.queue_depths(),
            "in_flight": sum(self.runner.in_flight),
        }
        self._prev, self._prev_t = cur, now
        return snap

    def eta_s(self) -> float | None:
        """Time left, from the share of the whole job's work done so far.

        Stage i expects as many inputs as stage i-1 is expected to emit (source total times
        the observed out/in ratios); an item of stage i costs its mean time in the stage so
        far. Done work over expected work is the share f done in the elapsed time, so
        elapsed * (1 - f) / f is left: stages overlap, and the wall clock already shows by how
        much. Unknown ("--:--") until every stage has finished at least one item.
        """
        expected = self.runner.source_total
        if not expected:
            return None
        funnel = self.runner.ctx.funnel.to_dict()
        total = done_work = 0.0
        for i, spec in enumerate(self.runner.specs):
            done = self.runner.finished[i]
            row = funnel.get(spec.stage.name)
            if not done or row is None:
                return None
            cost = self.runner.busy_s[i] / done
            total += max(expected, done) * cost
            done_work += done * cost
            expected *= row["out"] / done
        if total <= 0 or done_work <= 0:
            return None
        share = done_work / total
        return (time.monotonic() - self._t0) * (1 - share) / share

    def windowed_rates(self) -> dict:
        """Rates over the last `window_s` (a slow model answers less than once a second), and
        items finished per second by each stage."""
        now = time.monotonic()
        cur = self._prev or dict(self.probe())   # the counters snapshot() just read
        self._window.append((now, cur, list(self.runner.finished)))
        while len(self._window) > 2 and now - self._window[0][0] > self.window_s:
            self._window.popleft()
        t0, old, old_finished = self._window[0]
        dt = now - t0
        if dt <= 0:
            return {"req_s": 0.0, "tok_s": 0.0, "chk_s": 0.0, "stage_s": [0.0] * len(self.runner.specs)}
        out = {k: (cur.get(src, 0) - old.get(src, 0)) / dt
               for k, src in (("req_s", "requests"), ("tok_s", "completion_tokens"), ("chk_s", "checks"))}
        out["stage_s"] = [(a - b) / dt for a, b in zip(self.runner.finished, old_finished)]
        return out

    def headline(self, snap: dict) -> str:
        return (f"[{_fmt_dur(time.monotonic() - self._t0)}] ETA {_fmt_dur(self.eta_s())} | "
                f"gen {_fmt_rate(snap['req_s'])} req/s {_fmt_rate(snap['tok_s'])} tok/s | pool "
                f"{_fmt_rate(snap['chk_s'])} chk/s busy {snap['pool_busy']:.0%} | queued "
                f"{sum(snap['queues'].values())} in-flight {snap['in_flight']}")

    def render(self, snap: dict) -> str:
        """The plain line (logs, CI): the headline and in>kept per main stage."""
        funnel = self.runner.ctx.funnel.to_dict()
        # main stages only; sub-item rows ("verifiers.answer") are in the final funnel table
        stages = " ".join(f"{s}:{r['in']}>{r['kept']}" for s, r in funnel.items() if "." not in s)
        return f"{self.headline(snap)} | {stages}"

    def table(self, snap: dict) -> Group:
        """The live view on a terminal: the headline over one row per stage."""
        funnel = self.runner.ctx.funnel.to_dict()
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
        table.add_column("stage", no_wrap=True, overflow="ellipsis")
        # short headers: nine columns fit 80 terminal columns with a 24-character stage name
        for col in ("in", "kept", "out", "drop", "lost", "queue", "busy", "/s"):
            table.add_column(col, justify="right")
        rates = snap.get("stage_s", [])
        for i, spec in enumerate(self.runner.specs):
            name = spec.stage.name
            row = funnel.get(name, {"in": 0, "kept": 0, "out": 0, "dropped": {}})
            dropped, lost = _split_drops(row)
            table.add_row(name, str(row["in"]), str(row["kept"]), str(row["out"]), str(dropped),
                          Text(str(lost), style="bold red" if lost else ""),
                          str(snap["queues"].get(name, 0)), str(self.runner.in_flight[i]),
                          _fmt_rate(rates[i]) if i < len(rates) else "-")
        return Group(Text(self.headline(snap), overflow="fold"), table)

    def tick(self) -> None:
        snap = self.snapshot()
        if self.series is not None:
            self.series.maybe_sample(lambda: {k: v for k, v in snap.items() if k != "queues"}
                                     | {f"q_{k}": v for k, v in snap["queues"].items()})
        shown = snap | self.windowed_rates()
        self.last_line = self.render(shown)
        now = time.monotonic()
        if self.tty:
            if self._live is None:
                self._live = Live(console=self.console, auto_refresh=False, transient=False)
                self._live.start()
            self._live.update(self.table(shown), refresh=True)
        elif now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.stream.write(self.last_line + "\n")
            self.stream.flush()

    async def run(self) -> None:
        """Tick until cancelled; the caller cancels it when the runner returns."""
        self._t0 = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.tick()
        finally:
            if self._live is not None:
                self._live.stop()
                self._live = None
            elif self.last_line:
                self.stream.write(self.last_line + "\n")   # where the run ended
                self.stream.flush()
