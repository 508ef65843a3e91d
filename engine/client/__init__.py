"""HTTP client for SGLang (native) and OpenAI-compatible servers; see `LLMClient`.

Layout: `client` (LLMClient: the sampling path: retry loop, failover, stats), `admin` (SGLang's
admin endpoints, as `client.admin`), `balancer` (server choice),
`retry` (RetryPolicy), `timeouts` (Timeouts), `wire` (request bodies / response parsing per API), `sse` (stream
decoding), `prometheus` (/metrics parsing), `errors` (RequestFailed and its subclasses).
"""
from engine.aio import install_uvloop
from engine.client.balancer import Balancer, Server, messages_routing_key, routing_key
from engine.client.client import ClientStats, LLMClient
from engine.client.errors import (BadRequest, ConnectFailed, Disconnected, LLMError, ProtocolFailed,
                                  RateLimited, RequestFailed, RequestTimeout, ServerFault, StreamBroke)
from engine.client.prometheus import parse_metrics
from engine.client.retry import RetryPolicy
from engine.client.timeouts import Timeouts

__all__ = [
    "Balancer", "ClientStats", "LLMClient", "RequestFailed", "RetryPolicy", "Server", "Timeouts",
    "install_uvloop", "messages_routing_key", "parse_metrics", "routing_key",
    "BadRequest", "ConnectFailed", "Disconnected", "LLMError", "ProtocolFailed", "RateLimited",
    "RequestTimeout", "ServerFault", "StreamBroke",
]
