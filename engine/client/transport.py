"""Per-attempt transport plumbing: the in-flight slot, the POST wrapper and error mapping.

Every aiohttp/OS failure of one HTTP attempt becomes an `AttemptError` with a kind
(connect, timeout, disconnect, http_429, http_5xx, http_4xx, stream_error, protocol) that
the retry loop in `engine.client.client` acts on.
"""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from engine.client import wire
from engine.client.balancer import Server
from engine.client.errors import AttemptError


class Slot:
    """Holds one of the client's in-flight places (`limit`) and the server's outstanding count
    for an attempt; it also counts the attempt on the server."""

    __slots__ = ("limit", "server")

    def __init__(self, limit: asyncio.Semaphore, server: Server) -> None:
        self.limit = limit
        self.server = server

    async def __aenter__(self) -> None:
        await self.limit.acquire()
        self.server.outstanding += 1
        self.server.attempts += 1

    async def __aexit__(self, *exc: Any) -> None:
        self.server.outstanding -= 1
        self.limit.release()


class Request:
    """`session.post` with transport failures translated into AttemptErrors."""

    __slots__ = ("session", "url", "body", "timeout", "resp")

    def __init__(self, session: aiohttp.ClientSession, url: str, body: bytes,
                 timeout: aiohttp.ClientTimeout) -> None:
        self.session = session
        self.url = url
        self.body = body
        self.timeout = timeout
        self.resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            self.resp = await self.session.post(self.url, data=self.body, timeout=self.timeout)
        except Exception as exc:
            raise transport_error(exc) from None
        return self.resp

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if self.resp is not None:
            if exc is None:
                self.resp.release()   # body fully read: the connection goes back to the pool
            else:
                self.resp.close()     # unread stream: never reuse this connection
        if exc is not None and not isinstance(exc, (AttemptError, GeneratorExit,
                                                    asyncio.CancelledError)):
            translated = transport_error(exc)
            if translated is not exc:
                raise translated from None
        return False


def feed(acc: wire.NativeStream | wire.OpenAIStream, obj: Any) -> tuple[int, str]:
    try:
        return acc.feed(obj)
    except wire.StreamError as exc:
        raise AttemptError("stream_error", f"error event in stream: {exc}") from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise AttemptError("protocol", f"bad stream chunk: {exc}") from None


async def read_body(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    except Exception as exc:
        raise transport_error(exc) from None


def transport_error(exc: BaseException) -> BaseException:
    """Map aiohttp/OS exceptions onto AttemptError kinds; anything else passes through."""
    if isinstance(exc, AttemptError):
        return exc
    if isinstance(exc, TimeoutError):
        return AttemptError("timeout", f"timed out ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return AttemptError("connect", f"cannot connect: {exc.os_error or exc}")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                        aiohttp.ClientOSError, ConnectionError)):
        return AttemptError("disconnect", f"connection dropped: {type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientError):
        return AttemptError("protocol", f"{type(exc).__name__}: {exc}")
    return exc


def http_error(status: int, message: str, retry_after: str | None) -> AttemptError:
    try:
        pause = float(retry_after) if retry_after else None
    except ValueError:
        pause = None
    reason = f"http {status}: {message}"
    if status == 429:
        return AttemptError("http_429", reason, server_fault=False, status=status, retry_after=pause)
    if status >= 500:
        return AttemptError("http_5xx", reason, status=status, retry_after=pause)
    # any other 4xx is the request's fault: retrying cannot help
    return AttemptError("http_4xx", reason, retryable=False, server_fault=False, status=status)
