"""Failure types of the client: the public RequestFailed family (defined with the engine's other
errors in engine.errors), and one internal per-attempt error."""
from __future__ import annotations

from engine.errors import (BadRequest, ConnectFailed, Disconnected, LLMError, ProtocolFailed, RateLimited,
                           RequestFailed, RequestTimeout, ServerFault, StreamBroke)

__all__ = ["AttemptError", "BadRequest", "ConnectFailed", "Disconnected", "LLMError", "ProtocolFailed",
           "RateLimited", "RequestFailed", "RequestTimeout", "ServerFault", "StreamBroke"]


class AttemptError(Exception):
    """One HTTP attempt failed. Internal: the retry loop turns these into RequestFailed
    (`RequestFailed.of(kind, ...)`: the subclass for the kind).

    `retryable`: worth another attempt; `server_fault`: counts toward taking the server
    out of rotation (429 does not: an overloaded server is alive).
    """

    __slots__ = ("kind", "reason", "retryable", "server_fault", "status", "retry_after")

    def __init__(self, kind: str, reason: str, *, retryable: bool = True,
                 server_fault: bool = True, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = " ".join(reason.split())[:300]
        self.retryable = retryable
        self.server_fault = server_fault
        self.status = status
        self.retry_after = retry_after
