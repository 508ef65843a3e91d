"""StateStore (SQLite WAL) and CachedLLM: persistence, no duplicates on resume, cache hits send nothing."""
import asyncio
import sqlite3

import orjson
import pytest

from engine.cache import CachedLLM
from engine.llm import Completion, SamplingParams
from engine.records import Case, Instruction, Verifier, VerifiedInstruction
from engine.state import StateStore


class CountingLLM:
    """An LLM double that counts requests; answer text encodes prompt and sample index."""

    model = "m1"

    def __init__(self, delay: float = 0.0, finish: str = "stop"):
        self.calls = 0
        self.delay = delay
        self.finish = finish

    async def generate(self, prompt, *, n=1, params=None):
        self.calls += 1
        await asyncio.sleep(self.delay)
        return [Completion(text=f"{prompt}#{i}", finish_reason=self.finish, completion_tokens=3) for i in range(n)]

    async def chat(self, messages, *, n=1, params=None):
        return await self.generate(messages[-1]["content"], n=n, params=params)


def _verified(text="Use no commas."):
    return VerifiedInstruction(Instruction(text), ((Verifier("def evaluate(r):\n    return True\n"), 1.0),),
                               (Case("a", True),))


def test_wal_and_tables(tmp_path):
    store = StateStore(tmp_path / "run")
    assert store.path.name == "state.sqlite"
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_records_insert_or_ignore_across_reopen(tmp_path):
    with StateStore(tmp_path) as store:
        assert store.put_record(_verified(), "crossval") is True
        assert store.put_record(_verified(), "crossval") is False
    with StateStore(tmp_path) as store:                     # a resumed run
        assert store.put_records([_verified(), _verified("All lowercase please.")], "crossval") == 1
        got = list(store.iter_records(VerifiedInstruction))
        assert [v.instruction.text for v in got] == ["Use no commas.", "All lowercase please."]
        assert got[0] == _verified()
        assert store.count_records("VerifiedInstruction") == 2


def test_funnel_meta(tmp_path):
    with StateStore(tmp_path) as store:
        store.save_funnel({"crossval": {"in": 2, "kept": 1}})
        store.save_funnel({"crossval": {"in": 3, "kept": 2}})
        rows = sqlite3.connect(store.path).execute("SELECT data FROM funnel ORDER BY seq").fetchall()
        assert [orjson.loads(d) for (d,) in rows] == [{"crossval": {"in": 2, "kept": 1}},
                                                      {"crossval": {"in": 3, "kept": 2}}]
        store.set_meta("config_hash", "abc")
        assert store.get_meta("config_hash") == "abc" and store.get_meta("nope") is None


async def test_cache_hit_sends_no_request_and_survives_restart(tmp_path):
    inner = CountingLLM()
    with StateStore(tmp_path) as store:
        llm = CachedLLM(inner, store)
        params = SamplingParams(temperature=0.5)
        first = await llm.generate("p", n=3, params=params)
        again = await llm.generate("p", n=3, params=params)
        assert again == first and inner.calls == 1 and (llm.hits, llm.misses) == (1, 1)
        await llm.generate("p", n=2, params=params)                     # n is part of the key
        await llm.generate("p", n=3, params=SamplingParams(temperature=0.6))
        await llm.chat([{"role": "user", "content": "p"}], n=3, params=params)   # chat != generate
        assert inner.calls == 4
    with StateStore(tmp_path) as store:
        fresh = CountingLLM()
        llm = CachedLLM(fresh, store)
        assert await llm.generate("p", n=3, params=SamplingParams(temperature=0.5)) == first
        assert fresh.calls == 0


async def test_concurrent_identical_requests_share_one_call(tmp_path):
    inner = CountingLLM(delay=0.05)
    with StateStore(tmp_path) as store:
        llm = CachedLLM(inner, store)
        results = await asyncio.gather(*(llm.chat([{"role": "user", "content": "q"}], n=2) for _ in range(5)))
        assert inner.calls == 1 and all(r == results[0] for r in results)


async def test_aborted_answers_and_errors_are_not_cached(tmp_path):
    with StateStore(tmp_path) as store:
        inner = CountingLLM(finish="abort")
        llm = CachedLLM(inner, store)
        await llm.generate("p")
        await llm.generate("p")
        assert inner.calls == 2 and store.cache_size() == 0

        class Failing(CountingLLM):
            async def generate(self, prompt, *, n=1, params=None):
                self.calls += 1
                raise ConnectionError("down")

        failing = Failing()
        llm = CachedLLM(failing, store)
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await llm.generate("p")
        assert failing.calls == 2 and store.cache_size() == 0


async def test_a_cancelled_leader_does_not_cancel_requests_waiting_on_it(tmp_path):
    """Identical requests share one call; when the task that made it is cancelled, the others
    ask for it themselves instead of dying with a CancelledError that was not theirs."""
    inner = CountingLLM(delay=0.2)
    with StateStore(tmp_path) as store:
        llm = CachedLLM(inner, store)
        leader = asyncio.create_task(llm.generate("same"))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(llm.generate("same"))
        await asyncio.sleep(0.01)
        leader.cancel()
        answer = await asyncio.wait_for(follower, 5)
        assert leader.cancelled()
        assert answer and inner.calls == 2 and store.cache_size() == 1


def test_cache_keys_of_earlier_runs_still_match():
    """A resumed run must find the answers an earlier version stored: these keys were written
    by the asdict-based key of commit 376874e."""
    from engine.cache import request_key
    from engine.llm import SamplingParams
    p = SamplingParams(max_new_tokens=200, temperature=0.3, stop=("\n# C", "x"), json_schema="{}", extra={"k": [1, 2]})
    assert request_key("m", "chat", [{"role": "user", "content": "hi"}], 3, p) == \
        "a70f0946d5b5b41019fd06176f152ebe4f737cfc054b176015a55f14e60a46bb"
    assert request_key("m", "generate", "prompt", 1, SamplingParams(), namespace="r1") == \
        "b8ac8cfb19431b618410f377ec24c9d265274f5afad8505fa1418bcb83b899be"
