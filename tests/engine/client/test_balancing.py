"""Several simulators behind one LLMClient: load spreading and prefix-sticky routing."""
from __future__ import annotations

import asyncio
import contextlib
import random

from engine.client import Balancer, LLMClient
from engine.llm import SamplingParams
from engine.sim import LatencyModel, SimConfig, SimServer

PARAMS = SamplingParams(max_new_tokens=24)


@contextlib.asynccontextmanager
async def sims(count: int, **latency):
    latency.setdefault("speed", 20.0)
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(SimServer(SimConfig(latency=LatencyModel(**latency))))
               for _ in range(count)]


async def test_distinct_prompts_spread_over_servers():
    async with sims(3) as servers:
        async with LLMClient([s.url for s in servers], api="sglang", seed=1) as client:
            prompts = [f"{random.Random(i).random():.12f} distinct prompt {i}" for i in range(150)]
            out = await asyncio.gather(*(client.generate(p, params=PARAMS) for p in prompts))
            per_server = client.stats()["servers"]
    done = [s.counters.completed for s in servers]
    assert sum(done) == 150
    assert min(done) >= 25, done                              # nobody starved
    assert {c[0].server for c in out} == {s.url for s in servers}
    assert [per_server[s.url]["successes"] for s in servers] == done


async def test_same_prefix_sticks_to_one_server():
    async with sims(3) as servers:
        async with LLMClient([s.url for s in servers], api="sglang") as client:
            query = "Write a function that checks whether a response has exactly three bullets. " * 4
            homes = set()
            for stage in range(12):                           # later stages share the prefix
                [c] = await client.generate(query + f" (variant {stage})", params=PARAMS)
                homes.add(c.server)
            assert len(homes) == 1
            # and the sticky home is where the radix cache hits
            home = next(s for s in servers if s.url in homes)
            assert home.counters.cached_tokens > 0


async def test_different_queries_get_different_homes():
    async with sims(3) as servers:
        async with LLMClient([s.url for s in servers], api="sglang") as client:
            homes = set()
            for q in range(30):
                [c] = await client.generate(f"query number {q} " * 30, params=PARAMS)
                homes.add(c.server)
    assert len(homes) == 3


async def test_overloaded_home_spills_to_least_loaded():
    # slow servers so requests pile up; one shared prefix would all go to one home
    async with sims(2, speed=2.0) as servers:
        async with LLMClient([s.url for s in servers], api="sglang", sticky_factor=2.0,
                             sticky_slack=4) as client:
            prefix = "shared system prompt for every request " * 10
            out = await asyncio.gather(*(client.generate(prefix + str(i), params=PARAMS)
                                         for i in range(40)))
    used = {c[0].server for c in out}
    assert len(used) == 2                                     # the home did not take all 40
    counts = sorted(s.counters.completed for s in servers)
    assert counts[0] >= 5


def test_balancer_rendezvous_moves_only_the_dead_servers_keys():
    b = Balancer(["http://a", "http://b", "http://c"], rng=random.Random(0))
    keys = list(range(1000))
    before = {k: b.pick(k).url for k in keys}
    dead = b.servers[1]
    dead.healthy = False
    after = {k: b.pick(k).url for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == dead.url for k in moved)
    assert all(after[k] != dead.url for k in keys)
    assert 200 < sum(1 for k in keys if before[k] == dead.url) < 470


def test_balancer_least_outstanding_without_key():
    b = Balancer(["http://a", "http://b"], rng=random.Random(0))
    b.servers[0].outstanding = 5
    assert all(b.pick().url == "http://b" for _ in range(10))
    b.servers[1].outstanding = 5
    assert {b.pick().url for _ in range(50)} == {"http://a", "http://b"}   # fair ties
