"""The live progress display (rich): fits the terminal, plain lines from the start in logs."""
import asyncio
import io
import re

from rich.console import Console

from engine.progress import Progress, funnel_table
from engine.runner import StageSpec, StreamRunner
from engine.stage import Context
from tests.engine.test_runner import Sleepy, ctx

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COUNTERS = {"requests": 0, "completion_tokens": 0, "checks": 0, "pool_busy_s": 0.0}


async def drive(progress: Progress, runner: StreamRunner, n: int) -> None:
    task = asyncio.create_task(runner.run(range(n)))
    ticker = asyncio.create_task(progress.run())
    await task
    await asyncio.sleep(0.12)            # one more tick after the end
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)


async def test_terminal_view_fits_80_columns_and_shows_each_stage():
    runner = StreamRunner([StageSpec(Sleepy("a_stage_with_a_long_name", 0.01, fan_out=2), 2),
                           StageSpec(Sleepy("b", 0.02), 2)], ctx())
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    progress = Progress(runner, lambda: dict(COUNTERS), console=console, interval_s=0.05)
    assert progress.tty
    await drive(progress, runner, 30)
    text = ANSI.sub("", out.getvalue())
    lines = [line for chunk in text.split("\r") for line in chunk.split("\n")]
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "a_stage_with_a_long_name" in text and "queue" in text and "ETA" in text
    # the last frame shows the final counts: 30 in, 60 out of the first stage
    assert re.search(r"a_stage_with_a_long_name\s+30\s+30\s+60", text), text[-2000:]


async def test_plain_lines_from_the_first_tick_when_not_a_terminal():
    runner = StreamRunner([StageSpec(Sleepy("a", 0.01), 2)], ctx())
    out = io.StringIO()
    progress = Progress(runner, lambda: dict(COUNTERS), stream=out, interval_s=0.05, log_every_s=60)
    assert not progress.tty
    await drive(progress, runner, 20)
    lines = out.getvalue().splitlines()
    # a short run still says something: the first tick, then where it ended (no escape codes)
    assert len(lines) == 2 and all(line.startswith("[00:00] ETA ") for line in lines)
    assert "a:20>20" in lines[-1] and "\x1b" not in out.getvalue()


def test_final_funnel_table_marks_errors():
    funnel = {"responses": {"in": 6, "kept": 4, "out": 4,
                            "dropped": {"no_response_passed": 1, "error:http_5xx": 1}}}
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=True, color_system="standard").print(funnel_table(funnel))
    text = out.getvalue()
    assert "\x1b[1;31merror:http_5xx=1" in text                 # lost items in bold red
    assert re.search(r"responses\s+6\s+4\s+4\s+no_response_passed=1", ANSI.sub("", text))
