"""Failure types of the client: one public exception, one internal per-attempt error."""
from __future__ import annotations


class RequestFailed(Exception):
    """A logical request that produced no result. `str(exc)` is a one-line reason.

    `kind` names the class of the last failure (connect, timeout, disconnect, http_5xx,
    http_429, http_4xx, stream_error, protocol, no_server); `status` is the HTTP status
    when there was one; `attempts` counts the HTTP attempts made.
    """

    def __init__(self, reason: str, *, kind: str, status: int | None = None,
                 attempts: int = 0, server: str = "") -> None:
        super().__init__(" ".join(reason.split()))
        self.kind = kind
        self.status = status
        self.attempts = attempts
        self.server = server

    @property
    def reason(self) -> str:
        return str(self)


class AttemptError(Exception):
    """One HTTP attempt failed. Internal: the retry loop turns these into RequestFailed.

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
