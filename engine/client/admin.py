"""SGLang's admin endpoints on a client's servers: health, model and server info, capacity, cache
flush, request abort and /metrics. Apart from the sampling path in `engine.client.client`; get one
from a started client as `client.admin`.
"""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

import aiohttp
import orjson

from engine.client import wire
from engine.client.balancer import Server
from engine.client.prometheus import parse_metrics
from engine.errors import RequestFailed


async def request(session: aiohttp.ClientSession, server: Server, method: str, path: str,
                  payload: Any, timeout: aiohttp.ClientTimeout) -> tuple[int, bytes]:
    """One control request: (HTTP status, body)."""
    data = orjson.dumps(payload) if payload is not None else None
    async with session.request(method, server.url + path, data=data, timeout=timeout) as resp:
        return resp.status, await resp.read()


async def healthy(session: aiohttp.ClientSession, server: Server, timeout: aiohttp.ClientTimeout) -> bool:
    """GET /health answered 200 (any failure to connect: False)."""
    try:
        async with session.get(server.url + "/health", timeout=timeout) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class ServerAdmin:
    """The admin endpoints of `servers` (the client's, in its balancer's order)."""

    def __init__(self, session: aiohttp.ClientSession, servers: Sequence[Server],
                 timeout: aiohttp.ClientTimeout) -> None:
        self.session = session
        self.servers = list(servers)
        self.timeout = timeout
        self._server_info_path: str | None = None

    def _server(self, url: str | None) -> Server:
        if url is None:
            return self.servers[0]
        url = url.rstrip("/")
        for s in self.servers:
            if s.url == url:
                return s
        raise ValueError(f"unknown server {url}")

    async def _request(self, server: Server, method: str, path: str, payload: Any = None) -> tuple[int, bytes]:
        return await request(self.session, server, method, path, payload, self.timeout)

    async def _json(self, server: Server, path: str) -> Any:
        status, raw = await self._request(server, "GET", path)
        if status != 200:
            raise RequestFailed.of("http_4xx" if status < 500 else "http_5xx",
                                   f"GET {path}: http {status}: {wire.error_message(raw)}",
                                   status=status, server=server.url)
        return orjson.loads(raw)

    async def health(self) -> dict[str, bool]:
        """GET /health on every server (does not change rotation)."""
        results = await asyncio.gather(*(healthy(self.session, s, self.timeout) for s in self.servers))
        return {s.url: ok for s, ok in zip(self.servers, results)}

    async def model_info(self, server: str | None = None) -> dict:
        return await self._json(self._server(server), "/get_model_info")

    async def server_info(self, server: str | None = None) -> dict:
        """SGLang server info: /get_server_info, or /server_info on newer releases."""
        s = self._server(server)
        paths = [self._server_info_path] if self._server_info_path else ["/get_server_info", "/server_info"]
        last: RequestFailed | None = None
        for path in paths:
            try:
                info = await self._json(s, path)
                self._server_info_path = path
                return info
            except RequestFailed as exc:
                last = exc
                if exc.status != 404:
                    raise
        assert last is not None
        raise last

    async def flush_cache(self) -> dict[str, bool]:
        """Flush every server's radix cache; SGLang refuses (False) while it is busy."""
        async def one(s: Server) -> bool:
            status, _ = await self._request(s, "POST", "/flush_cache")
            return status == 200
        return dict(zip((s.url for s in self.servers), await asyncio.gather(*(one(s) for s in self.servers))))

    async def abort_request(self, rid: str = "", *, abort_all: bool = False) -> None:
        """Abort a request id (SGLang matches it as a prefix) on every server."""
        payload = {"rid": rid, "abort_all": abort_all}
        await asyncio.gather(*(self._request(s, "POST", "/abort_request", payload) for s in self.servers))

    async def metrics(self, server: str | None = None) -> dict[str, float]:
        """/metrics parsed: metric name -> value, summed over label sets."""
        s = self._server(server)
        status, raw = await self._request(s, "GET", "/metrics")
        if status != 200:
            raise RequestFailed.of("http_4xx" if status < 500 else "http_5xx", f"GET /metrics: http {status}",
                                   status=status, server=s.url)
        return parse_metrics(raw.decode("utf-8", "replace"))

    async def capacity(self, server: str | None = None) -> int | None:
        """Max running requests of one server, or summed over all when `server` is None."""
        if server is not None:
            return await self._capacity(self._server(server))
        caps = await asyncio.gather(*(self._capacity(s) for s in self.servers))
        known = [c for c in caps if c]
        return sum(known) if known else None

    async def _capacity(self, server: Server) -> int | None:
        try:
            info = await self.server_info(server.url)
        except (RequestFailed, aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            info = {}
        value = info.get("max_running_requests") if isinstance(info, dict) else None
        if not value and isinstance(info, dict):
            for state in info.get("internal_states") or ():
                if isinstance(state, dict) and state.get("max_running_requests"):
                    value = (value or 0) + int(state["max_running_requests"])
        if not value:
            try:
                m = await self.metrics(server.url)
            except (RequestFailed, aiohttp.ClientError, TimeoutError):
                m = {}
            value = m.get("sglang:max_running_requests") or m.get("sglang:max_running_requests_under_SLO")
        return int(value) if value else None
