"""HTTP routes of the SGLang protocol simulator (a test double of SGLang's HTTP server).

Paths and shapes follow SGLang's http_server.py and its OpenAI-compatible layer; see
engine/sim/protocol.py for the exact files and commits each shape was taken from.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable, Protocol

import orjson
from aiohttp import web

from engine.sim import protocol as P
from engine.sim.responders import prompt_text
from engine.sim.config import SimConfig
from engine.sim.scheduler import BatchScheduler, SimRequest
from engine.sim.tokens import count_tokens, messages_text, split_tokens



class SimBackend(Protocol):
    """What the HTTP layer needs of the simulated server (engine.sim.server.SimServer): its
    settings, scheduler and counters, and the answers to the admin endpoints."""

    config: SimConfig
    scheduler: BatchScheduler
    counters: Any
    body_log: Any

    def finish_ok(self, samples: list[SimRequest]) -> None: ...

    def flush_cache(self) -> bool: ...

    def server_info(self) -> dict: ...

    def metrics_text(self) -> str: ...

log = logging.getLogger("engine.sim")

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class BadRequest(Exception):
    """A request the simulator refuses with 400, like SGLang's validation errors."""


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=P.dumps(obj), status=status, content_type=_JSON)


class SimApp:
    def __init__(self, server: SimBackend) -> None:
        self.sim = server

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        for path in ("/health", "/health_generate"):
            r.add_get(path, self.health)
        for path in ("/get_model_info", "/model_info"):
            r.add_get(path, self.model_info)
        for path in ("/get_server_info", "/server_info"):
            r.add_get(path, self.server_info)
        r.add_route("*", "/flush_cache", self.flush_cache)
        r.add_post("/abort_request", self.abort_request)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/models", self.models)
        r.add_post("/generate", self.generate)
        r.add_put("/generate", self.generate)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        return app

    # -- small endpoints ---------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def model_info(self, request: web.Request) -> web.Response:
        cfg = self.sim.config
        return _json_response({
            "model_path": cfg.model_path, "tokenizer_path": cfg.model_path,
            "is_generation": True, "preferred_sampling_params": None,
            "weight_version": "default",
        })

    async def server_info(self, request: web.Request) -> web.Response:
        return _json_response(self.sim.server_info())

    async def flush_cache(self, request: web.Request) -> web.Response:
        ok = self.sim.flush_cache()
        return web.Response(
            text="Cache flushed.\nPlease check backend logs for more details. (When there are "
                 "running or waiting requests, the operation will not be performed.)\n",
            status=200 if ok else 400)

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
        except BadRequest as exc:
            return _json_response(P.native_error(str(exc)), 400)
        if body.get("abort_all"):
            self.sim.scheduler.abort_all("Aborted by AbortReq (abort_all).")
        elif body.get("rid"):
            self.sim.scheduler.abort(str(body["rid"]))
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.sim.metrics_text(),
                            content_type="text/plain", charset="utf-8")

    async def models(self, request: web.Request) -> web.Response:
        return _json_response(P.model_list(self.sim.config.model, self.sim.config.context_len))

    # -- generation: native ------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        sim.counters.received += 1
        try:
            body = await self._json(request)
            if (fault := self._reject_fault(native=True)) is not None:
                return fault
            text, input_ids = body.get("text"), body.get("input_ids")
            if text is None and input_ids is None:
                raise BadRequest("Either text, input_ids or input_embeds should be provided.")
            if isinstance(text, list) or (input_ids and isinstance(input_ids[0], list)):
                raise BadRequest("The simulator serves single prompts only (no batch input).")
            prompt: Any = text if text is not None else input_ids
            sp = dict(body.get("sampling_params") or {})
            samples = self._make_samples(prompt, sp, body.get("rid"))
        except BadRequest as exc:
            sim.counters.bad_requests += 1
            return _json_response(P.native_error(str(exc)), 400)
        sim.log_request("/generate", sp)
        stream = bool(body.get("stream"))
        plan = sim.draw_faults(stream)
        await self._schedule(samples, plan)
        if not stream:
            return await self._native_once(request, samples, plan)
        return await self._native_stream(request, samples, plan)

    async def _native_once(self, request, samples, plan) -> web.StreamResponse:
        await asyncio.gather(*(s.done for s in samples))
        if plan.drop:
            return self._drop(request)
        items = [self._native_item(s, len(samples)) for s in samples]
        self.sim.finish_ok(samples)
        return _json_response(items[0] if len(items) == 1 else items)

    def _native_item(self, s: SimRequest, n: int) -> dict:
        item = {"text": s.text(), "output_ids": list(range(100, 100 + s.emitted)),
                "meta_info": s.meta_info()}
        if n > 1:
            item["index"] = s.index
        return item

    async def _native_stream(self, request, samples, plan) -> web.StreamResponse:
        def chunk(s: SimRequest) -> bytes:
            return P.sse(self._native_item(s, len(samples)))

        def error() -> bytes:
            return P.sse(P.native_error("Simulated in-stream failure (fault injection)."))

        return await self._stream(request, samples, plan, chunk, error, tail=())

    # -- generation: OpenAI-compatible -------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        sim = self.sim
        sim.counters.received += 1
        route = "/v1/chat/completions" if chat else "/v1/completions"
        try:
            body = await self._json(request)
            if (fault := self._reject_fault(native=False)) is not None:
                return fault
            if chat:
                prompt = body.get("messages")
                if not isinstance(prompt, list) or not prompt:
                    raise BadRequest("messages must be a non-empty list")
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                    prompt = prompt[0]
                if not prompt:
                    raise BadRequest("Prompt cannot be empty")
                if isinstance(prompt, list) and isinstance(prompt[0], (str, list)):
                    raise BadRequest("The simulator serves single prompts only (no batch input).")
            sp = self._openai_sampling_params(body, chat)
            n = int(sp.get("n") or 1)
            if n > 1 and not sim.config.allow_n:
                # llama-server's answer to n > 1
                raise BadRequest("Only one completion choice is allowed")
            samples = self._make_samples(prompt, sp, body.get("rid"))
        except BadRequest as exc:
            sim.counters.bad_requests += 1
            return _json_response(P.openai_error(str(exc)), 400)
        sim.log_request(route, sp)
        stream = bool(body.get("stream"))
        plan = sim.draw_faults(stream)
        await self._schedule(samples, plan)
        model = body.get("model") or sim.config.model
        rid = samples[0].rid
        if not stream:
            await asyncio.gather(*(s.done for s in samples))
            if plan.drop:
                return self._drop(request)
            make_choice = P.chat_choice if chat else P.completion_choice
            choices = [make_choice(s.index, s.text(), s.finish_reason) for s in samples]
            use = self._usage(samples)
            make = P.chat_response if chat else P.completion_response
            sim.finish_ok(samples)
            return _json_response(make(rid, model, choices, use))

        created = int(time.time())
        opts = body.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage")) or sim.config.stream_default_include_usage
        sent: dict[int, int] = {}

        def chunk(s: SimRequest) -> bytes:
            # OpenAI streams carry deltas: the pieces emitted since the last chunk
            start = sent.get(s.index, 0)
            sent[s.index] = s.emitted
            delta_text = s.text_range(start, s.emitted)
            fr = s.finish_reason if s.finished else None
            if chat:
                out = b""
                if start == 0 and s.index not in first_sent:
                    first_sent.add(s.index)
                    out += P.sse(P.chat_chunk(rid, model, created, s.index,
                                              P.delta_message("", "assistant"), None))
                return out + P.sse(P.chat_chunk(rid, model, created, s.index,
                                                P.delta_message(delta_text), fr))
            return P.sse(P.completion_chunk(rid, model, created, s.index, delta_text, fr))

        first_sent: set[int] = set()

        def error() -> bytes:
            return P.sse(P.openai_stream_error("Simulated in-stream failure (fault injection).",
                                               "InternalServerError", 500))

        def tail() -> list[bytes]:
            if not include_usage:
                return []
            obj = "chat.completion.chunk" if chat else "text_completion"
            return [P.sse(P.usage_chunk(rid, model, created, obj, self._usage(samples)))]

        return await self._stream(request, samples, plan, chunk, error, tail=tail)

    def _openai_sampling_params(self, body: dict, chat: bool) -> dict:
        """What serving_completions/_chat hand to the engine, in SGLang's names."""
        if chat:
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        else:
            max_tokens = body.get("max_tokens", 16)
        if max_tokens is not None and max_tokens <= 0:
            raise BadRequest("max_tokens must be positive")
        sp: dict[str, Any] = {
            "temperature": body.get("temperature", 1.0),
            "max_new_tokens": max_tokens,
            "stop": body.get("stop"),
            "top_p": body.get("top_p", 1.0),
            "n": body.get("n", 1),
            "regex": body.get("regex"),
            "ebnf": body.get("ebnf"),
            "json_schema": body.get("json_schema"),
            "sampling_seed": body.get("seed"),
        }
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if schema is None:
                raise BadRequest("schema_ is required for json_schema response format request.")
            sp["json_schema"] = orjson.dumps(schema).decode()
        elif fmt.get("type") == "json_object":
            sp["json_schema"] = '{"type": "object"}'
        return {k: v for k, v in sp.items() if v is not None}

    # -- shared machinery --------------------------------------------------------------
    async def _json(self, request: web.Request) -> dict:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        self.sim.body_log.append((request.path, body))
        return body

    def _reject_fault(self, native: bool) -> web.Response | None:
        sim = self.sim
        if not sim.draw_reject():
            return None
        sim.counters.rejected += 1
        code = sim.config.faults.fail_status
        msg = f"{P.status_phrase(code)} (simulated fault)"
        body = P.native_error(msg) if native else P.openai_error(msg, "ServiceUnavailableError", code)
        return _json_response(body, code)

    def _make_samples(self, prompt: Any, sp: dict, rid: Any) -> list[SimRequest]:
        sim = self.sim
        n = sp.get("n", 1)
        if not isinstance(n, int) or n < 1:
            raise BadRequest(f"n must be a positive integer, got {n!r}")
        max_new = sp.get("max_new_tokens", 128)
        if max_new is not None and (not isinstance(max_new, int) or max_new < 0):
            raise BadRequest(f"max_new_tokens must be at least 0, got {max_new}.")
        temperature = sp.get("temperature", 1.0)
        if temperature is not None and temperature < 0:
            raise BadRequest(f"temperature must be non-negative, got {temperature}.")
        if sum(sp.get(k) is not None for k in ("json_schema", "regex", "ebnf")) > 1:
            raise BadRequest("Only one of regex, json_schema, or ebnf can be set.")
        stop = sp.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            text = messages_text(prompt)
        else:
            text = prompt_text(prompt)
        prompt_tokens = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) \
            else count_tokens(text)
        if max_new is None:
            max_new = max(1, sim.config.context_len - prompt_tokens)
        base = str(rid) if rid else uuid.uuid4().hex
        cached = sim.prefix_cache_lookup(text, prompt_tokens)
        progress = asyncio.Event()  # one event per HTTP request, shared by its n samples
        samples = []
        for i in range(n):
            full = sim.respond(prompt, sp, i)
            pieces, finish = _truncate(full, stop, max_new, sim.config.eos_token_id,
                                       bool(sp.get("no_stop_trim")))
            s = SimRequest(rid=base if n == 1 else f"{base}-{i}", prompt_tokens=prompt_tokens,
                           pieces=pieces, finish_reason=finish, index=i,
                           cached_tokens=cached if i == 0 else prompt_tokens)
            s.progress = progress
            samples.append(s)
        return samples

    async def _schedule(self, samples: list[SimRequest], plan) -> None:
        if plan.slow:
            await asyncio.sleep(self.sim.config.faults.slow_first_token_s)
        for s in samples:
            self.sim.scheduler.submit(s)

    def _usage(self, samples: list[SimRequest]) -> dict:
        # prompt counted once for the n samples of one prompt (UsageProcessor, n_choices)
        return P.usage(samples[0].prompt_tokens, sum(s.emitted for s in samples),
                       samples[0].cached_tokens)

    async def _stream(self, request: web.Request, samples: list[SimRequest], plan,
                      chunk: Callable[[SimRequest], bytes], error: Callable[[], bytes],
                      tail: Callable[[], list[bytes]] | tuple) -> web.StreamResponse:
        """Write SSE chunks as the scheduler makes progress, applying mid-stream faults."""
        sim = self.sim
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        total = sum(len(s.pieces) for s in samples)
        cut_at = max(1, total // 2) if (plan.drop or plan.stream_error) else None
        # last[i]: tokens of sample i already sent; -1 once its final chunk is out.
        # Like SGLang, the first chunk goes out with the first token, not before.
        last = [0] * len(samples)
        progress = samples[0].progress
        try:
            while True:
                progress.clear()
                for s in samples:
                    sent = last[s.index]
                    if sent >= 0 and (s.emitted > sent or s.finished):
                        await resp.write(chunk(s))
                        last[s.index] = -1 if s.finished else s.emitted
                if cut_at is not None and sum(s.emitted for s in samples) >= min(cut_at, total):
                    for s in samples:
                        s.abort("client stream cut by fault injection")
                    if plan.drop:
                        return self._drop(request, resp)
                    sim.counters.stream_errors += 1
                    await resp.write(error())
                    await resp.write(P.SSE_DONE)
                    return resp
                if all(s.finished for s in samples):
                    break
                await progress.wait()
            for extra in (tail() if callable(tail) else tail):
                await resp.write(extra)
            await resp.write(P.SSE_DONE)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            # client went away: SGLang aborts the request (create_abort_task)
            for s in samples:
                s.abort("client disconnected")
            sim.counters.aborted += 1
            raise
        sim.finish_ok(samples)
        return resp

    def _drop(self, request: web.Request, resp: web.StreamResponse | None = None) -> web.StreamResponse:
        """Close the TCP connection without a (complete) response."""
        self.sim.counters.dropped += 1
        transport = request.transport
        if transport is not None:
            transport.abort()
        request.protocol.force_close()
        return resp if resp is not None else web.Response(status=200)


def _truncate(text: str, stop: list[str], max_new: int, eos_id: int,
              no_stop_trim: bool) -> tuple[list[str], dict]:
    """Apply stop strings and max_new_tokens like SGLang's scheduler would."""
    matched: str | None = None
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut, matched = i, s
    body = text[:cut] + (matched if matched and no_stop_trim else "")
    pieces = split_tokens(body)
    if len(pieces) > max_new:
        return pieces[:max_new], {"type": "length", "length": max_new}
    if matched is not None:
        return pieces, {"type": "stop", "matched": matched}
    return pieces, {"type": "stop", "matched": eos_id}
