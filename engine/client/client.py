"""`LLMClient`: the engine's HTTP client for SGLang (native) or OpenAI-compatible servers.

    async with LLMClient(["http://127.0.0.1:30000"], api="auto") as llm:
        answers = await llm.generate("Write a haiku", n=4, params=SamplingParams(max_new_tokens=64))

One logical request (a `generate`/`chat` call) ends in exactly one returned list of
`Completion`s or one raised `RequestFailed`, whatever happened on the wire in between:
connect errors, timeouts, 429/5xx, dropped connections and broken streams are retried with
capped exponential backoff and full jitter, on another server when there is one.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import aiohttp
import orjson

from engine.client import wire
from engine.client.admin import ServerAdmin, healthy, request as control_request
from engine.client.balancer import Balancer, Server, messages_routing_key, routing_key
from engine.client.errors import AttemptError, BadRequest, RequestFailed
from engine.client.retry import RetryPolicy
from engine.client.sse import SSEDecoder
from engine.client.timeouts import Timeouts
from engine.client.transport import Request, Slot, feed, http_error, read_body
from engine.llm import Completion, Message, SamplingParams

log = logging.getLogger("engine.client")

_DEFAULT_PARAMS = SamplingParams()
REQUEST_SECONDS_LE = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_JSON_HEADERS = {"Content-Type": "application/json"}
APIS = ("auto", "sglang", "openai")


@dataclass
class ClientStats:
    requests: int = 0            # logical requests started
    succeeded: int = 0
    failed: int = 0
    in_flight: int = 0
    attempts: int = 0            # HTTP attempts
    retries: int = 0             # attempts beyond the first of each request
    cancelled: int = 0           # requests whose caller cancelled them (or left a stream)
    n_fallbacks: int = 0         # n > 1 requests fanned out as n single requests
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: Counter = field(default_factory=Counter)        # final failures by kind
    attempt_errors: Counter = field(default_factory=Counter)  # every failed attempt by kind
    # seconds from call to answer (or final failure) of each logical request, retries included:
    # counts per bucket of REQUEST_SECONDS_LE (upper bounds, inclusive; the last is +Inf)
    latency: list = field(default_factory=lambda: [0] * (len(REQUEST_SECONDS_LE) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(REQUEST_SECONDS_LE, seconds)] += 1
        self.latency_sum += seconds


@dataclass(slots=True)
class _Call:
    """What one logical request needs to build its body and read its answer."""

    chat: bool
    prompt: Any                  # str / token ids, or the message list for chat
    params: SamplingParams
    n: int
    stream: bool
    key: int | None
    rid: str | None = None


class LLMClient:
    """Implements `engine.llm.LLM` over HTTP. See the module docstring.

    urls: one server URL or several (least-outstanding balancing + prefix stickiness).
    api: "sglang" (native /generate; chat via /v1/chat/completions), "openai"
        (/v1/completions, /v1/chat/completions) or "auto" (probe /get_model_info).
    model: model name sent to OpenAI-compatible routes ("default" suits SGLang).
    max_in_flight: bound on concurrent HTTP requests across all servers.
    retry: RetryPolicy (attempts, base, cap).
    timeouts: Timeouts (request, connect, stream_idle, control).
    stream: read answers as SSE streams by default (generate/chat can override).
    routing_chars: how much of the prompt forms the default routing key.
    sticky_factor / sticky_slack: when a key's home server counts as overloaded.
    fail_threshold: consecutive failures that take a server out of rotation; it is then
        probed on /health every `probe_interval` seconds until it answers.
    native_stream_incremental: the SGLang server runs --incremental-streaming-output.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        api: str = "auto",
        model: str = "default",
        max_in_flight: int = 256,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        stream: bool = False,
        routing_chars: int = 256,
        sticky_factor: float = 2.0,
        sticky_slack: int = 4,
        fail_threshold: int = 3,
        probe_interval: float = 1.0,
        api_key: str | None = None,
        native_stream_incremental: bool = False,
        seed: int | None = None,
    ) -> None:
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {api!r}")
        url_list = [urls] if isinstance(urls, str) else list(urls)
        self.model = model
        self.api = api
        self.retry = retry or RetryPolicy()
        self.max_in_flight = max_in_flight
        self.stream_default = stream
        self.routing_chars = routing_chars
        self.probe_interval = probe_interval
        self.native_stream_incremental = native_stream_incremental
        self._rng = random.Random(seed)
        self.balancer = Balancer(url_list, sticky_factor=sticky_factor, sticky_slack=sticky_slack,
                                 fail_threshold=fail_threshold, rng=self._rng)
        self.timeouts = timeouts or Timeouts()
        self._timeout = self.timeouts.attempt()
        self._stream_timeout = self.timeouts.stream()
        self._control_timeout = self.timeouts.control_call()
        self._headers = dict(_JSON_HEADERS)
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._sem = asyncio.Semaphore(max_in_flight)
        self._api_lock = asyncio.Lock()
        self._resolved_api: str | None = None if api == "auto" else api
        self._n_native = True       # False once a server refused n > 1 (llama-server)
        self._admin: ServerAdmin | None = None
        self._background: set[asyncio.Task] = set()
        self._closing = False       # close() cuts what is still in flight: no server's fault
        self._stats = ClientStats()

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> "LLMClient":
        self._closing = False
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_in_flight + 16, limit_per_host=0,
                                             ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  headers=self._headers)
        return self

    async def close(self) -> None:
        self._closing = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "LLMClient":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("LLMClient is not started: use `async with LLMClient(...)`")
        return self._session

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.balancer.servers]

    # -- the LLM protocol ---------------------------------------------------------------
    async def generate(self, prompt: str | Sequence[int], *, n: int = 1,
                       params: SamplingParams | None = None, routing_key: str | None = None,
                       stream: bool | None = None) -> list[Completion]:
        """`n` samples for one prompt (a string, or token ids with api="sglang")."""
        if routing_key is None and not isinstance(prompt, str):
            routing_key = ",".join(map(str, prompt[:64]))
        call = _Call(False, prompt, params or _DEFAULT_PARAMS, n,
                     self.stream_default if stream is None else stream,
                     self._key(prompt if routing_key is None else routing_key))
        return await self._logical(call)

    async def chat(self, messages: Sequence[Message], *, n: int = 1,
                   params: SamplingParams | None = None, routing_key: str | None = None,
                   stream: bool | None = None) -> list[Completion]:
        if routing_key is not None:
            key = self._key(routing_key)
        elif len(self.balancer.servers) > 1:
            key = messages_routing_key(messages, self.routing_chars)
        else:
            key = None
        call = _Call(True, list(messages), params or _DEFAULT_PARAMS, n,
                     self.stream_default if stream is None else stream, key)
        return await self._logical(call)

    async def stream_generate(self, prompt: str | None = None, *,
                              messages: Sequence[Message] | None = None,
                              params: SamplingParams | None = None,
                              routing_key: str | None = None) -> AsyncIterator[str]:
        """Yield text deltas of one sample as they arrive.

        Closing the iterator early closes the connection (SGLang then aborts the request)
        and, on the native API, also sends /abort_request. Failures before the first
        delta are retried; a stream that breaks after text was delivered raises
        RequestFailed instead, since a retry would repeat text the caller already has.
        """
        if (prompt is None) == (messages is None):
            raise ValueError("give exactly one of prompt or messages")
        chat = messages is not None
        if chat:
            key = self._key(routing_key) if routing_key else messages_routing_key(messages, self.routing_chars)
        else:
            key = self._key(routing_key if routing_key is not None else prompt)
        call = _Call(chat, list(messages) if chat else prompt, params or _DEFAULT_PARAMS, 1, True,
                     key, rid=uuid.uuid4().hex)
        st = self._stats
        st.requests += 1
        st.in_flight += 1
        delivered = False
        finished = False
        try:
            api = await self._api()
            try:
                path, body = self._build(call, api)
            except ValueError as exc:
                raise BadRequest(f"bad request: {exc}") from None
            last: AttemptError | None = None
            avoid: Server | None = None
            for attempt in range(self.retry.attempts):
                if attempt:
                    st.retries += 1
                    await asyncio.sleep(self.retry.backoff(attempt, self._rng, last and last.retry_after))
                server = self.balancer.pick(key, avoid)
                server.retries += bool(attempt)
                try:
                    async with Slot(self._sem, server):
                        st.attempts += 1
                        async with self._post(server, path, body, stream=True) as resp:
                            await self._check_status(resp)
                            acc = self._accumulator(call, api)
                            async for obj in self._events(resp):
                                _, delta = feed(acc, obj)
                                if delta:
                                    delivered = True
                                    yield delta
                            if not acc.done:
                                raise AttemptError("disconnect", "stream ended before the last chunk")
                            result = acc.result(server.url)
                except AttemptError as err:
                    self._attempt_failed(server, err)
                    if delivered:
                        raise self._failed(call, err, attempt + 1, server,
                                           prefix="stream broke after text was delivered: ")
                    if not err.retryable:
                        raise self._failed(call, err, attempt + 1, server)
                    last, avoid = err, server
                    continue
                except (GeneratorExit, asyncio.CancelledError):
                    if api == "sglang" and not chat:
                        self._spawn(self._abort_quietly(server, call.rid))
                    raise
                self.balancer.record_success(server)
                self._count_success(result)
                finished = True
                return
            assert last is not None
            raise self._failed(call, last, self.retry.attempts, None, prefix="gave up: ")
        except RequestFailed as exc:
            st.failed += 1
            st.failures[exc.kind] += 1
            finished = True
            raise
        finally:
            st.in_flight -= 1
            if not finished:  # the caller stopped early: neither success nor failure
                st.cancelled += 1

    # -- logical request / retry loop ---------------------------------------------------
    def _key(self, text: str | None) -> int | None:
        if text is None or len(self.balancer.servers) == 1:
            return None  # one server: nothing to route
        return routing_key(text, self.routing_chars)

    async def _logical(self, call: _Call) -> list[Completion]:
        st = self._stats
        st.requests += 1
        st.in_flight += 1
        t0 = time.perf_counter()
        try:
            api = self._resolved_api or await self._api()
            if call.n > 1 and api == "openai" and not self._n_native:
                result = await self._fan_out(call, api)
            else:
                try:
                    result = await self._with_retries(call, api)
                except RequestFailed as exc:
                    if not (call.n > 1 and api == "openai" and isinstance(exc, BadRequest)):
                        raise
                    # maybe a server that refuses n > 1 (llama-server): try one sample first;
                    # if that is refused too, the request itself is bad (not n): one failure,
                    # not n more
                    single = _Call(call.chat, call.prompt, call.params, 1, call.stream, call.key)
                    try:
                        first = await self._with_retries(single, api)
                    except RequestFailed:
                        raise exc from None
                    rest = _Call(call.chat, call.prompt, call.params, call.n - 1, call.stream, call.key)
                    result = first + await self._fan_out(rest, api)
                    if self._n_native:
                        self._n_native = False
                        log.info("server refused n=%d (%s); fanning out from now on", call.n, exc)
        except RequestFailed as exc:
            st.failed += 1
            st.failures[exc.kind] += 1
            st.observe_latency(time.perf_counter() - t0)
            raise
        except asyncio.CancelledError:
            st.cancelled += 1
            raise
        finally:
            st.in_flight -= 1
        st.observe_latency(time.perf_counter() - t0)
        self._count_success(result)
        return result

    async def _fan_out(self, call: _Call, api: str) -> list[Completion]:
        self._stats.n_fallbacks += 1
        single = _Call(call.chat, call.prompt, call.params, 1, call.stream, call.key)
        outcomes = await asyncio.gather(*(self._with_retries(single, api) for _ in range(call.n)),
                                        return_exceptions=True)
        result: list[Completion] = []
        for out in outcomes:
            if isinstance(out, BaseException):
                raise out
            result.extend(out)
        return result

    async def _with_retries(self, call: _Call, api: str) -> list[Completion]:
        try:
            path, body = self._build(call, api)
        except ValueError as exc:
            raise BadRequest(f"bad request: {exc}", attempts=0) from None
        policy, st, sem = self.retry, self._stats, self._sem
        last: AttemptError | None = None
        avoid: Server | None = None
        server: Server | None = None
        for attempt in range(policy.attempts):
            if attempt:
                st.retries += 1
                await asyncio.sleep(policy.backoff(attempt, self._rng, last.retry_after if last else None))
            server = self.balancer.pick(call.key, avoid)
            server.retries += bool(attempt)
            # the in-flight slot, inlined (this is the per-request hot path; see transport.Slot)
            await sem.acquire()
            server.outstanding += 1
            server.attempts += 1
            st.attempts += 1
            try:
                result = await self._attempt(server, call, api, path, body)
            except AttemptError as err:
                self._attempt_failed(server, err)
                if not err.retryable:
                    raise self._failed(call, err, attempt + 1, server) from None
                last = err
                avoid = server if len(self.balancer.servers) > 1 else None
                continue
            finally:
                server.outstanding -= 1
                sem.release()
            self.balancer.record_success(server)
            return result
        assert last is not None
        raise self._failed(call, last, policy.attempts, server, prefix="gave up: ")

    async def _attempt(self, server: Server, call: _Call, api: str, path: str,
                       body: bytes) -> list[Completion]:
        async with self._post(server, path, body, stream=call.stream) as resp:
            if resp.status != 200:
                await self._check_status(resp)
            if call.stream:
                acc = self._accumulator(call, api)
                async for obj in self._events(resp):
                    feed(acc, obj)
                if not acc.done:
                    raise AttemptError("disconnect", "stream ended before the last chunk")
                return acc.result(server.url)
            raw = await read_body(resp)
        try:
            obj = orjson.loads(raw)
            if api == "sglang" and not call.chat:
                return wire.parse_native(obj, server.url)
            return wire.parse_openai(obj, server.url, call.chat)
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise AttemptError("protocol", f"unreadable response: {exc}") from None

    def _post(self, server: Server, path: str, body: bytes, stream: bool) -> Request:
        return Request(self.session, server.url + path, body,
                        self._stream_timeout if stream else self._timeout)

    async def _check_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status == 200:
            return
        body = await read_body(resp)
        raise http_error(resp.status, wire.error_message(body), resp.headers.get("Retry-After"))

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[dict]:
        """Decoded SSE events up to [DONE]; in-stream error events become AttemptErrors."""
        decoder = SSEDecoder()  # one generator layer only: this loop runs per token
        try:
            async for chunk in resp.content.iter_any():
                for data in decoder.feed(chunk):
                    if data == b"[DONE]":
                        return
                    try:
                        obj = orjson.loads(data)
                    except orjson.JSONDecodeError as exc:
                        raise AttemptError("protocol", f"bad stream chunk: {exc}") from None
                    if isinstance(obj, dict) and "error" in obj:
                        err = obj["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        raise AttemptError("stream_error", f"error event in stream: {msg}")
                    yield obj
            for data in decoder.flush():
                if data == b"[DONE]":
                    return
        except AttemptError:
            raise
        except TimeoutError:
            raise AttemptError("timeout", "stream went silent") from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, ConnectionError) as exc:
            raise AttemptError("disconnect", f"stream dropped: {type(exc).__name__}") from None
        raise AttemptError("disconnect", "stream ended without [DONE]")

    def _accumulator(self, call: _Call, api: str) -> wire.NativeStream | wire.OpenAIStream:
        if api == "sglang" and not call.chat:
            return wire.NativeStream(call.n, self.native_stream_incremental)
        return wire.OpenAIStream(call.n, call.chat)

    def _build(self, call: _Call, api: str) -> tuple[str, bytes]:
        p = call.params
        if call.chat:
            return "/v1/chat/completions", orjson.dumps(
                wire.chat_body(self.model, call.prompt, p, call.n, call.stream))
        if api == "sglang":
            return "/generate", orjson.dumps(
                wire.native_body(call.prompt, p, call.n, call.stream, call.rid))
        if not isinstance(call.prompt, str):
            raise ValueError("token-id prompts need api='sglang'")
        return "/v1/completions", orjson.dumps(
            wire.completion_body(self.model, call.prompt, p, call.n, call.stream))

    # -- accounting ---------------------------------------------------------------------
    def _attempt_failed(self, server: Server, err: AttemptError) -> None:
        self._stats.attempt_errors[err.kind] += 1
        server.errors[err.kind] += 1
        # A request cut by this client's own close (a run that stopped early, on a full disk
        # or an abort, leaves some in flight) says nothing about the server.
        if err.server_fault and not self._closing and self.balancer.record_failure(server):
            log.warning("server %s out of rotation after %d failures (%s)",
                        server.url, server.consecutive_failures, err.reason)
            self._start_probe(server)

    def _failed(self, call: _Call, err: AttemptError, attempts: int, server: Server | None,
                prefix: str = "") -> RequestFailed:
        where = f" [{server.url}]" if server is not None else ""
        return RequestFailed.of(err.kind, f"{prefix}{err.kind}: {err.reason}{where}",
                                status=err.status, attempts=attempts,
                                server=server.url if server else "")

    def _count_success(self, result: list[Completion]) -> None:
        st = self._stats
        st.succeeded += 1
        if result:
            # the n samples share one prompt: count its tokens once
            st.prompt_tokens += max(c.prompt_tokens for c in result)
            st.completion_tokens += sum(c.completion_tokens for c in result)

    def stats(self) -> dict:
        st = self._stats
        return {
            "requests": st.requests, "succeeded": st.succeeded, "failed": st.failed,
            "in_flight": st.in_flight, "cancelled": st.cancelled,
            "attempts": st.attempts, "retries": st.retries,
            "n_fallbacks": st.n_fallbacks, "failures": dict(st.failures),
            "attempt_errors": dict(st.attempt_errors),
            "prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
            # request seconds per bucket upper bound (a dict, so shards' stats add up key by key)
            "latency": {"buckets": dict(zip([f"{le:g}" for le in REQUEST_SECONDS_LE] + ["+Inf"], st.latency)),
                        "sum": round(st.latency_sum, 6)},
            "api": self._resolved_api or self.api,
            "servers": {s.url: s.snapshot() for s in self.balancer.servers},
        }

    # -- API detection ------------------------------------------------------------------
    async def _api(self) -> str:
        if self._resolved_api is not None:
            return self._resolved_api
        async with self._api_lock:
            if self._resolved_api is None:
                for server in self.balancer.servers:
                    found = await self._detect(server)
                    if found:
                        self._resolved_api = found
                        log.info("api=auto: %s speaks %s", server.url, found)
                        break
        # nobody answered yet: OpenAI routes work on SGLang too, detect again next time
        return self._resolved_api or "openai"

    async def _detect(self, server: Server) -> str | None:
        try:
            async with self.session.get(server.url + "/get_model_info",
                                        timeout=self._control_timeout) as resp:
                if resp.status == 200:
                    info = orjson.loads(await resp.read())
                    return "sglang" if isinstance(info, dict) and "model_path" in info else "openai"
                # no such route: not SGLang; anything else (5xx, ...) decides nothing yet
                return "openai" if resp.status in (404, 405) else None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return None

    # -- health probing -----------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _start_probe(self, server: Server) -> None:
        if not server.probing:
            server.probing = True
            self._spawn(self._probe(server))

    async def _probe(self, server: Server) -> None:
        try:
            while not server.healthy:
                await asyncio.sleep(self.probe_interval)
                if server.healthy:
                    break
                if await healthy(self.session, server, self._control_timeout):
                    self.balancer.record_success(server)
                    server.successes -= 1  # a probe is not a served request
                    log.warning("server %s back in rotation", server.url)
        finally:
            server.probing = False

    async def _abort_quietly(self, server: Server, rid: str | None) -> None:
        if rid:
            try:
                await control_request(self.session, server, "POST", "/abort_request", {"rid": rid},
                                      self._control_timeout)
            except (aiohttp.ClientError, TimeoutError):
                pass

    # -- admin endpoints ----------------------------------------------------------------
    @property
    def admin(self) -> ServerAdmin:
        """SGLang's admin endpoints (info, capacity, cache flush, abort, /metrics) on these servers."""
        if self._admin is None or self._admin.session is not self.session:
            self._admin = ServerAdmin(self.session, self.balancer.servers, self._control_timeout)
        return self._admin
