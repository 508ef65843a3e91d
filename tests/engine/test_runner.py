"""StreamRunner: streaming without barriers, two-way backpressure, counted errors, shutdown."""
from __future__ import annotations

import asyncio
import time

import pytest

from engine.runner import StageSpec, StreamRunner
from engine.stage import Context, Funnel


class Sleepy:
    """A stage that takes `delay` seconds per item and records when it saw each one."""

    def __init__(self, name: str, delay: float, fan_out: int = 1) -> None:
        self.name, self.delay, self.fan_out = name, delay, fan_out
        self.seen: list[tuple[float, object]] = []
        self.active = 0
        self.max_active = 0

    async def process(self, item, ctx):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        self.seen.append((time.perf_counter(), item))
        return [item] * self.fan_out


class Picky:
    name = "picky"

    async def process(self, item, ctx):
        if item % 3 == 0:
            ctx.funnel.drop(self.name, "divisible_by_3")
            return []
        if item % 5 == 0:
            raise ValueError("five is bad")
        return [item * 10]


def ctx() -> Context:
    return Context(llm=None, executor=None, funnel=Funnel())  # type: ignore[arg-type]


async def test_items_flow_on_without_waiting_for_the_batch():
    a, b = Sleepy("a", 0.01), Sleepy("b", 0.0)
    out = []
    runner = StreamRunner([StageSpec(a, 1), StageSpec(b, 1)], ctx(), sink=out.append)
    summary = await runner.run(range(20))
    assert sorted(out) == list(range(20))
    assert summary.sink_items == 20 and summary.stopped == "completed"
    # the first item reached stage b long before stage a finished its last item
    first_b = min(t for t, _ in b.seen)
    last_a = max(t for t, _ in a.seen)
    assert first_b < last_a - 0.1


async def test_slow_downstream_throttles_upstream():
    fast, slow = Sleepy("fast", 0.0), Sleepy("slow", 0.02)
    runner = StreamRunner([StageSpec(fast, 4), StageSpec(slow, 2)], ctx(), queue_size=4)
    seen_fast_when_slow_started = []

    async def watch():
        while not slow.seen:
            await asyncio.sleep(0.001)
        seen_fast_when_slow_started.append(len(fast.seen))

    w = asyncio.create_task(watch())
    task = asyncio.create_task(runner.run(range(200)))
    await asyncio.sleep(0.2)
    # after 0.2 s the slow stage finished ~20 items; the fast one may be ahead by at most
    # the bounded queue + its workers + what the slow stage holds, not by the whole source
    ahead = len(fast.seen) - len(slow.seen)
    assert ahead <= 4 + 4 + 2 + 1, ahead
    await task
    await w
    assert len(slow.seen) == 200
    assert slow.max_active <= 2


async def test_errors_and_drops_are_counted_not_fatal():
    c = ctx()
    out = []
    summary = await StreamRunner([Picky()], c, sink=out.append).run(range(1, 31))
    f = summary.funnel["picky"]
    assert f["in"] == 30
    # 3,6,...,30 -> 10 dropped by rule; 5,10,20,25 (not 15/30: divisible by 3 first) -> 4 errors
    assert f["dropped"] == {"divisible_by_3": 10, "error:ValueError": 4}
    assert f["kept"] == 16 == len(out)
    assert sorted(out) == [x * 10 for x in range(1, 31) if x % 3 and x % 5]


async def test_fan_out_counts_outputs_separately_from_kept():
    c = ctx()
    summary = await StreamRunner([Sleepy("fan", 0.0, fan_out=3)], c).run(range(7))
    assert summary.funnel["fan"] == {"in": 7, "kept": 7, "out": 21, "dropped": {}}
    assert summary.sink_items == 21


async def test_stop_finishes_started_items_and_starts_no_new_ones():
    a = Sleepy("a", 0.01)
    out = []
    runner = StreamRunner([StageSpec(a, 2)], ctx(), sink=out.append, queue_size=2)

    async def source():
        for i in range(10_000):
            yield i

    task = asyncio.create_task(runner.run(source()))
    await asyncio.sleep(0.1)
    runner.stop()
    summary = await asyncio.wait_for(task, 5)
    assert summary.stopped == "drained"
    # every item started was finished and delivered exactly once; those still waiting in the
    # queue stayed unstarted (a rerun starts them), and the source was read no further
    assert summary.funnel["a"]["in"] == summary.funnel["a"]["kept"] == len(out) == len(set(out))
    # (at most the queue's 2 slots and one item per worker taken as the stop came)
    assert summary.source_items - 2 - 2 <= len(out) <= summary.source_items < 10_000


async def test_abort_cancels_in_flight_work_promptly():
    a = Sleepy("a", 30.0)
    runner = StreamRunner([StageSpec(a, 4)], ctx())
    task = asyncio.create_task(runner.run(range(100)))
    await asyncio.sleep(0.05)
    t = time.perf_counter()
    runner.stop(abort=True)
    summary = await asyncio.wait_for(task, 5)
    assert summary.stopped == "aborted"
    assert time.perf_counter() - t < 2
    assert summary.sink_items == 0


def test_empty_pipeline_is_refused():
    with pytest.raises(ValueError):
        StreamRunner([], ctx())


async def test_progress_line_has_windowed_rates_and_an_eta_once_every_stage_moved():
    import io

    from engine.progress import Progress

    counters = {"requests": 0, "completion_tokens": 0, "checks": 0, "pool_busy_s": 0.0}
    a, b = Sleepy("a", 0.01, fan_out=2), Sleepy("b", 0.02)
    runner = StreamRunner([StageSpec(a, 2), StageSpec(b, 2)], ctx())
    out = io.StringIO()
    progress = Progress(runner, lambda: dict(counters), stream=out, interval_s=0.05, log_every_s=0.0)
    assert progress.eta_s() is None                     # nothing known yet
    task = asyncio.create_task(runner.run(range(40)))
    ticker = asyncio.create_task(progress.run())
    etas = []
    for _ in range(12):
        await asyncio.sleep(0.05)
        counters["requests"] += 5
        counters["completion_tokens"] += 50
        if all(runner.finished):
            etas.append(progress.eta_s())
    ticker.cancel()
    line = progress.last_line                           # taken while the counters still moved
    await task
    # 40 items, 0.01 s each over 2 workers in a; 80 items, 0.02 s over 2 workers in b: ~1 s of work
    assert etas and all(e is not None and 0 <= e < 5 for e in etas)
    assert etas[-1] < etas[0]                           # the estimate comes down as work is done
    assert "req/s" in line and "a:" in line and "b:" in line
    rate = float(line.split("gen ")[1].split(" req/s")[0])
    assert 50 <= rate <= 200                            # 5 requests every ~0.05 s


async def test_abort_still_delivers_items_the_last_stage_finished():
    """Items that are through every stage when the abort comes are not lost on the way to the sink."""
    fast = Sleepy("fast", 0.0)
    out = []
    gate = asyncio.Event()

    async def slow_sink(item):
        await gate.wait()             # the sink lags: finished items pile up before it
        out.append(item)

    runner = StreamRunner([StageSpec(fast, 2)], ctx(), sink=slow_sink, queue_size=8)
    task = asyncio.create_task(runner.run(range(5)))
    await asyncio.sleep(0.1)
    runner.stop(abort=True)
    gate.set()
    summary = await asyncio.wait_for(task, 5)
    assert summary.stopped == "aborted"
    assert sorted(out) == list(range(5)) and summary.sink_items == 5


class Ordered:
    """Holds odd items until its whole input has arrived (sort key: the item itself); even items
    pass at once. Records the order it processed items in."""

    name = "ordered"

    def __init__(self) -> None:
        self.order: list[int] = []

    def hold(self, item):
        return item if item % 2 else None

    async def process(self, item, ctx):
        self.order.append(item)
        return [item]


class Jitter:
    """Finishes items in an order unrelated to their arrival; raises on `bad`."""

    name = "jitter"

    def __init__(self, bad: frozenset = frozenset()) -> None:
        self.bad = bad

    async def process(self, item, ctx):
        await asyncio.sleep(((item * 7919) % 13) / 1000)
        if item in self.bad:
            raise ValueError("lost")
        return [item]


async def test_held_items_wait_for_the_whole_input_then_go_in_key_order():
    ordered = Ordered()
    out = []
    runner = StreamRunner([StageSpec(Jitter(), 8), StageSpec(ordered, 4)], ctx(), sink=out.append)
    summary = await runner.run(range(30))
    assert summary.stopped == "completed" and sorted(out) == list(range(30))
    odd = [i for i in ordered.order if i % 2]
    assert odd == list(range(1, 30, 2))                     # key order, not arrival order
    # every even item (taken at once) was processed before the first held one
    assert set(ordered.order[:15]) == set(range(0, 30, 2))
    assert summary.funnel["ordered"] == {"in": 30, "kept": 30, "out": 30, "dropped": {}}


async def test_held_items_stay_unstarted_when_an_upstream_item_was_lost():
    ordered = Ordered()
    out = []
    runner = StreamRunner([StageSpec(Jitter(bad=frozenset({4})), 8), StageSpec(ordered, 4)], ctx(),
                          sink=out.append)
    summary = await runner.run(range(30))
    assert summary.funnel["jitter"]["dropped"] == {"error:ValueError": 1}
    assert all(i % 2 == 0 for i in ordered.order)            # no held item was started
    assert sorted(out) == [i for i in range(0, 30, 2) if i != 4]
    assert summary.funnel["ordered"]["in"] == 14


async def test_stop_leaves_items_queued_between_stages_unstarted():
    a, b = Sleepy("a", 0.0, fan_out=20), Sleepy("b", 0.05)
    out = []
    runner = StreamRunner([StageSpec(a, 1), StageSpec(b, 2)], ctx(), sink=out.append, queue_size=64)
    task = asyncio.create_task(runner.run(range(5)))
    await asyncio.sleep(0.12)          # a has queued dozens of items for b, b started a few
    t = time.perf_counter()
    runner.stop()
    summary = await asyncio.wait_for(task, 5)
    assert time.perf_counter() - t < 0.5
    assert summary.stopped == "drained"
    started = summary.funnel["b"]["in"]
    assert started == len(out) < summary.funnel["a"]["out"]   # started ones finished; queued ones not


class SlowLLM:
    """Answers every chat request after `delay` seconds; counts the requests it was sent."""

    def __init__(self, delay: float) -> None:
        self.delay, self.sent = delay, 0

    async def chat(self, messages, n=1, params=None):
        self.sent += 1
        await asyncio.sleep(self.delay)
        return []


class TwoRounds:
    """A stage that fans out: one request, then a second once the first is answered."""

    name = "rounds"

    async def process(self, item, ctx):
        from engine.roles import JUDGE
        from engine.stages.base import Sampling, ask
        for _ in range(2):
            await ask(ctx, "p", Sampling(1, 0.0, 8), role=JUDGE)
        return [item]


async def test_stop_lets_sent_requests_finish_and_sends_no_next_round():
    llm = SlowLLM(0.3)
    c = Context(llm=llm, executor=None, funnel=Funnel())  # type: ignore[arg-type]
    out = []
    runner = StreamRunner([StageSpec(TwoRounds(), 4)], c, sink=out.append)
    task = asyncio.create_task(runner.run(range(8)))
    await asyncio.sleep(0.1)           # four items in flight, each waiting on its first request
    runner.stop()
    summary = await asyncio.wait_for(task, 5)
    assert summary.stopped == "drained" and out == []
    assert llm.sent == 4               # the first round of each started item, no second round
    # the four items are neither kept nor dropped: a rerun takes them from the start
    assert summary.funnel["rounds"] == {"in": 4, "kept": 0, "out": 0, "dropped": {}}
