"""The reward service: an aiohttp app over one Scorer (a run's verified instructions + the
sandbox pool), answering every dialect of engine.reward.dialects.

Every error is a 4xx with a one-line JSON body {"error": "..."}, logged at warning level and
counted by reason in GET /health and GET /metrics (engine.reward.metrics); a request is scored
in its own sandbox jobs, so a hostile completion can cost its own request time, never
another's reward. `--api-key` is checked on every scoring route, as `Authorization: Bearer
KEY` or as `?api_key=KEY` (OpenRLHF's client sends no headers of its own, only the URL).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from engine.reward import dialects
from engine.reward.metrics import ServiceMetrics
from engine.reward.scorer import RequestError, RewardSettings, RewardTable, Scorer, table_summary

log = logging.getLogger("autoif.reward")

SCORER: web.AppKey[Scorer] = web.AppKey("scorer", Scorer)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
METRICS: web.AppKey[ServiceMetrics] = web.AppKey("metrics", ServiceMetrics)


@dataclass(frozen=True)
class ServiceOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_mb: float = 64.0


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": " ".join(message.split())}, status)


async def _body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestError(413, f"request body over the {request.app[MAX_BODY]} byte limit "
                                f"({exc.text or 'too large'})") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"body is not JSON: {exc}") from None


Handler = Callable[[web.Request, Any, Scorer], Awaitable[web.Response]]


def _route(path: str, handler: Handler, api_key: str | None, metrics: ServiceMetrics):
    def refuse(exc: RequestError) -> web.Response:
        metrics.count(path, exc.status, exc.reason)
        log.warning("%s refused (%d, %s): %s", path, exc.status, exc.reason, exc)
        return _error(exc.status, str(exc))

    async def wrapped(request: web.Request) -> web.Response:
        if api_key is not None:
            given = request.query.get("api_key", "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[len("Bearer "):]
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return refuse(RequestError(401, "missing or wrong API key", "unauthorized"))
        try:
            response = await handler(request, await _body(request), request.app[SCORER])
        except RequestError as exc:
            return refuse(exc)
        metrics.count(path, response.status)
        return response
    return wrapped


async def _scored(scorer: Scorer, items: list) -> list:
    scorer.check(items)
    return await scorer.score(items)


async def score(request: web.Request, body: Any, scorer: Scorer) -> web.Response:
    return _json(dialects.native_answer(await _scored(scorer, dialects.native_items(body))))


async def get_reward(request: web.Request, body: Any, scorer: Scorer) -> web.Response:
    return _json(dialects.openrlhf_answer(await _scored(scorer, dialects.openrlhf_items(body))))


async def verify(request: web.Request, body: Any, scorer: Scorer) -> web.Response:
    items = dialects.nemo_items(body)
    return _json(dialects.nemo_answer(body, await _scored(scorer, items)))


def make_app(scorer: Scorer, options: ServiceOptions | None = None) -> web.Application:
    options = options or ServiceOptions()
    max_body = int(options.max_body_mb * 1024 * 1024)
    app = web.Application(client_max_size=max_body)
    app[SCORER] = scorer
    app[MAX_BODY] = max_body
    started = time.time()
    routes = {"/score": score, "/get_reward": get_reward, "/verify": verify}
    metrics = app[METRICS] = ServiceMetrics(routes, lambda: scorer.scored)

    async def health(request: web.Request) -> web.Response:
        refused = metrics.refused()
        return _json({"status": "ok", **table_summary(scorer.table), "scored": scorer.scored,
                      "refused": refused, "refused_total": sum(refused.values()),
                      "mode": scorer.settings.mode, "uptime_s": round(time.time() - started, 1)})

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    for path, handler in routes.items():
        app.router.add_post(path, _route(path, handler, options.api_key, metrics))
    return app


async def serve(table: RewardTable, executor: Any, settings: RewardSettings,
                options: ServiceOptions, ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM. `ready` gets the base URL once the socket listens."""
    app = make_app(Scorer(table, executor, settings), options)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        if ready is not None:
            ready(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
