"""Request bodies and response parsing for SGLang's native API and the OpenAI-compatible API.

Field names follow SGLang's source (sgl-project/sglang):
- native /generate request: GenerateReqInput (python/sglang/srt/managers/io_struct.py
  @ 001067fffe33427bee0ed2f007fb7551a1d76b44): text | input_ids, sampling_params, stream, rid;
  sampling_params keys from SamplingParams (python/sglang/srt/sampling/sampling_params.py
  @ 00c17cafcb9e289d5ca97c50e44ada54e4fd5b03): max_new_tokens, temperature, top_p, stop,
  n, json_schema (a JSON string), regex, sampling_seed.
- native response: {"text", "output_ids", "meta_info"}, a list of them when n > 1 (each
  with "index" when streamed); meta_info keys id, finish_reason ({"type": "stop"|"length"|
  "abort", ...}), prompt_tokens, completion_tokens, cached_tokens, e2e_latency
  (python/sglang/srt/managers/tokenizer_manager.py @ 001067ff...). By default streamed
  chunks carry the cumulative text (server flag --incremental-streaming-output changes it).
- OpenAI-compatible: CompletionRequest / ChatCompletionRequest and their responses
  (python/sglang/srt/entrypoints/openai/protocol.py @ 004c82e07d876f6e4a0ad6e15325706b0f478f1a);
  json_schema travels as response_format {"type": "json_schema", "json_schema": {"name",
  "schema"}}, which SGLang, llama-server and OpenAI all accept.
- errors: native {"error": {"message"}} (http_server._create_error_response), OpenAI
  {"object": "error", "message", "type", "param", "code"} (serving_base.create_error_response
  @ c5695a4be1c4f84791eeaceeb6e4a775f8e7d0cc); llama-server nests {"error": {"message"}} too.
"""
from __future__ import annotations

from typing import Any, Sequence

import orjson

from engine.llm import Completion, SamplingParams

# -- request bodies ------------------------------------------------------------------------


def native_sampling_params(p: SamplingParams, n: int) -> dict:
    sp: dict[str, Any] = {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature,
                          "top_p": p.top_p}
    if p.stop:
        sp["stop"] = list(p.stop)
    if n != 1:
        sp["n"] = n
    if p.json_schema is not None:
        sp["json_schema"] = p.json_schema
    if p.regex is not None:
        sp["regex"] = p.regex
    if p.seed is not None:
        sp["sampling_seed"] = p.seed  # SGLang's name; OpenAI's "seed" maps onto it
    if p.extra:
        sp.update(p.extra)
    return sp


def native_body(prompt: str | Sequence[int], p: SamplingParams, n: int, stream: bool,
                rid: str | None = None) -> dict:
    body: dict[str, Any] = {"input_ids": list(prompt)} if not isinstance(prompt, str) else {"text": prompt}
    body["sampling_params"] = native_sampling_params(p, n)
    if stream:
        body["stream"] = True
    if rid is not None:
        body["rid"] = rid
    return body


def _json_schema_format(schema: str) -> dict:
    try:
        parsed = orjson.loads(schema)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"json_schema is not valid JSON: {exc}") from None
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": parsed}}


def _openai_common(body: dict, p: SamplingParams, n: int, stream: bool) -> dict:
    body["max_tokens"] = p.max_new_tokens
    body["temperature"] = p.temperature
    body["top_p"] = p.top_p
    if n != 1:
        body["n"] = n
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.json_schema is not None:
        body["response_format"] = _json_schema_format(p.json_schema)
    if p.regex is not None:
        body["regex"] = p.regex  # SGLang extension; other servers ignore it
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if p.extra:
        body.update(p.extra)
    return body


def completion_body(model: str, prompt: str, p: SamplingParams, n: int, stream: bool) -> dict:
    return _openai_common({"model": model, "prompt": prompt}, p, n, stream)


def chat_body(model: str, messages: Sequence[dict], p: SamplingParams, n: int, stream: bool) -> dict:
    return _openai_common({"model": model, "messages": list(messages)}, p, n, stream)


# -- errors --------------------------------------------------------------------------------


def error_message(body: bytes) -> str:
    """The human message of an error body, on one line."""
    msg: Any = None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        msg = body.decode("utf-8", "replace")
    else:
        if isinstance(obj, dict):
            err = obj.get("error")
            if isinstance(err, dict):
                msg = err.get("message")
            elif isinstance(err, str):
                msg = err
            msg = msg or obj.get("message") or obj.get("detail")
        msg = msg if msg is not None else obj
    text = " ".join(str(msg).split())
    return text[:300] if text else "(empty body)"


# -- non-streaming responses ----------------------------------------------------------------


def _native_completion(item: dict, server: str) -> Completion:
    meta = item.get("meta_info") or {}
    fr = meta.get("finish_reason")
    return Completion(
        text=item.get("text") or "",
        finish_reason=(fr.get("type") if isinstance(fr, dict) else fr) or "stop",
        prompt_tokens=int(meta.get("prompt_tokens") or 0),
        completion_tokens=int(meta.get("completion_tokens") or 0),
        server=server,
    )


def parse_native(obj: Any, server: str) -> list[Completion]:
    if isinstance(obj, dict):
        if "error" in obj:
            raise ValueError(str(obj["error"]))
        return [_native_completion(obj, server)]
    if isinstance(obj, list):
        items = sorted(obj, key=lambda it: it.get("index", 0)) if obj and "index" in obj[0] else obj
        return [_native_completion(it, server) for it in items]
    raise ValueError(f"unexpected /generate response of type {type(obj).__name__}")


def _apportion(total: int, texts: list[str]) -> list[int]:
    """Split a usage total over choices by text length (OpenAI gives only the total)."""
    if len(texts) == 1:
        return [total]
    size = sum(len(t) for t in texts) or 1
    shares = [total * len(t) // size for t in texts]
    shares[-1] += total - sum(shares)
    return shares


def parse_openai(obj: Any, server: str, chat: bool) -> list[Completion]:
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        raise ValueError("response has no choices")
    choices = sorted(obj["choices"], key=lambda c: c.get("index", 0))
    if chat:
        texts = [((c.get("message") or {}).get("content") or "") for c in choices]
    else:
        texts = [c.get("text") or "" for c in choices]
    use = obj.get("usage") or {}
    completion = _apportion(int(use.get("completion_tokens") or 0), texts)
    prompt_tokens = int(use.get("prompt_tokens") or 0)
    return [Completion(text=t, finish_reason=c.get("finish_reason") or "stop",
                       prompt_tokens=prompt_tokens, completion_tokens=k, server=server)
            for t, c, k in zip(texts, choices, completion)]


# -- streaming responses --------------------------------------------------------------------


class StreamError(Exception):
    """An error event inside a stream."""


class NativeStream:
    """Accumulates SGLang /generate SSE chunks; `feed` returns (index, new text)."""

    __slots__ = ("n", "incremental", "texts", "parts", "meta", "finished")

    def __init__(self, n: int, incremental: bool = False) -> None:
        self.n = n
        self.incremental = incremental
        self.texts = [""] * n
        self.parts: list[list[str]] = [[] for _ in range(n)]
        self.meta: list[dict] = [{} for _ in range(n)]
        self.finished = 0

    def feed(self, obj: dict) -> tuple[int, str]:
        if "error" in obj:
            err = obj["error"]
            raise StreamError(err.get("message") if isinstance(err, dict) else str(err))
        i = int(obj.get("index", 0))
        if not 0 <= i < self.n:
            raise ValueError(f"stream chunk index {i} out of range")
        text = obj.get("text") or ""
        if self.incremental:
            delta = text
            self.parts[i].append(text)
        else:  # cumulative text (SGLang's default): the delta is the new suffix
            delta = text[len(self.texts[i]):]
            self.texts[i] = text
        meta = obj.get("meta_info") or {}
        if meta.get("finish_reason") and not self.meta[i].get("finish_reason"):
            self.finished += 1
        self.meta[i] = meta
        return i, delta

    @property
    def done(self) -> bool:
        return self.finished >= self.n

    def result(self, server: str) -> list[Completion]:
        out = []
        for i in range(self.n):
            text = "".join(self.parts[i]) if self.incremental else self.texts[i]
            out.append(_native_completion({"text": text, "meta_info": self.meta[i]}, server))
        return out


class OpenAIStream:
    """Accumulates /v1/completions or /v1/chat/completions SSE chunks."""

    __slots__ = ("n", "chat", "parts", "finish", "usage", "finished")

    def __init__(self, n: int, chat: bool) -> None:
        self.n = n
        self.chat = chat
        self.parts: list[list[str]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.usage: dict = {}
        self.finished = 0

    def feed(self, obj: dict) -> tuple[int, str]:
        if "error" in obj:
            err = obj["error"]
            raise StreamError(err.get("message") if isinstance(err, dict) else str(err))
        if obj.get("usage"):
            self.usage = obj["usage"]
        index, delta = 0, ""
        for c in obj.get("choices") or ():
            index = int(c.get("index", 0))
            if not 0 <= index < self.n:
                raise ValueError(f"stream chunk index {index} out of range")
            piece = ((c.get("delta") or {}).get("content") if self.chat else c.get("text")) or ""
            if piece:
                self.parts[index].append(piece)
                delta = piece
            fr = c.get("finish_reason")
            if fr and self.finish[index] is None:
                self.finish[index] = fr
                self.finished += 1
        return index, delta

    @property
    def done(self) -> bool:
        return self.finished >= self.n

    def result(self, server: str) -> list[Completion]:
        texts = ["".join(p) for p in self.parts]
        completion = _apportion(int(self.usage.get("completion_tokens") or 0), texts)
        prompt_tokens = int(self.usage.get("prompt_tokens") or 0)
        return [Completion(text=t, finish_reason=f or "stop", prompt_tokens=prompt_tokens,
                           completion_tokens=k, server=server)
                for t, f, k in zip(texts, self.finish, completion)]
