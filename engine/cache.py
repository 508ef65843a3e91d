"""CachedLLM: the LLM protocol with a persistent answer cache in the run's StateStore.

The key hashes everything that determines the answer distribution: model, the prompt or
messages, n and the sampling parameters. A hit returns the stored completions and sends
nothing; identical requests in flight at once share one upstream call. Answers cut off by
an abort are not cached (a resumed run should ask again).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any, Sequence

import orjson

from engine.llm import LLM, Completion, Message, SamplingParams


# Field names, read once: dataclasses.asdict deep-copies every value on every call, and a run
# builds a cache key for every LLM request.
_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
_COMPLETION_FIELDS = tuple(f.name for f in dataclasses.fields(Completion))


def request_key(model: str, kind: str, payload: Any, n: int, params: SamplingParams,
                namespace: str = "") -> str:
    # The same bytes as before (orjson writes tuples as lists; keys are sorted): existing caches still hit.
    body = {"model": model, "kind": kind, "payload": payload, "n": n,
            "params": {f: getattr(params, f) for f in _PARAM_FIELDS}}
    if namespace:  # e.g. an online-DPO round: the same prompt must be sampled afresh
        body["namespace"] = namespace
    blob = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


def _to_rows(completions: list[Completion]) -> list[dict]:
    return [{f: getattr(c, f) for f in _COMPLETION_FIELDS} for c in completions]


def _from_rows(rows: list[dict]) -> list[Completion]:
    return [Completion(**row) for row in rows]


class CachedLLM:
    """Wraps any LLM; `hits` / `misses` count how the cache did."""

    def __init__(self, llm: LLM, store: Any, namespace: str = "") -> None:
        self.llm = llm
        self.store = store
        self.namespace = namespace
        self.model = getattr(llm, "model", "")
        self.hits = 0
        self.misses = 0
        self._inflight: dict[str, asyncio.Future] = {}

    async def _cached(self, key: str, call) -> list[Completion]:
        rows = self.store.cache_get(key)
        if rows is not None:
            self.hits += 1
            return _from_rows(rows)
        shared = self._inflight.get(key)
        if shared is not None:
            self.hits += 1
            try:
                return list(await asyncio.shield(shared))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if shared.cancelled() and not (task and task.cancelling()):
                    # the request we waited on was cancelled, not us: ask for it ourselves
                    return await self._cached(key, call)
                raise
        self.misses += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            completions = list(await call())
        except asyncio.CancelledError:
            future.cancel()               # waiters see a cancelled future and retry themselves
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()            # mark retrieved: waiters re-raise, nobody logs it twice
            raise
        else:
            if all(c.finish_reason != "abort" for c in completions):
                self.store.cache_put(key, _to_rows(completions))
            future.set_result(completions)
            return completions
        finally:
            self._inflight.pop(key, None)

    async def generate(self, prompt: str, *, n: int = 1,
                       params: SamplingParams | None = None) -> list[Completion]:
        params = params or SamplingParams()
        key = request_key(self.model, "generate", prompt, n, params, self.namespace)
        return await self._cached(key, lambda: self.llm.generate(prompt, n=n, params=params))

    async def chat(self, messages: Sequence[Message], *, n: int = 1,
                   params: SamplingParams | None = None) -> list[Completion]:
        params = params or SamplingParams()
        key = request_key(self.model, "chat", list(messages), n, params, self.namespace)
        return await self._cached(key, lambda: self.llm.chat(messages, n=n, params=params))
