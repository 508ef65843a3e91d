"""The engine's exceptions: one root, and a class for each kind of failure (as httpx/_exceptions.py).

    AutoIFError
    ├── ConfigError          a setting that cannot be used (also a ValueError)
    ├── InputError           an input file, or one of its lines, that cannot be used (also a ValueError)
    ├── PromptError          a prompt template that is missing or does not render (also a KeyError)
    ├── JobError             the job cannot run: mismatched run directory, no server answers, ...
    │   └── RefusedError         refused before any work: bad inputs, an unusable output directory
    ├── ReportError          no report can be made from a run directory
    ├── ServerError          a server the engine starts and stops (engine.servers)
    │   └── ServerStartError     it exited, or never became healthy, while starting
    └── LLMError             asking an LLM server (engine.client)
        └── RequestFailed        one logical request produced no result; by its last failure:
            ├── ConnectFailed        no connection could be made
            ├── RequestTimeout       no answer in time
            ├── Disconnected         the connection dropped mid-answer
            ├── RateLimited          HTTP 429, retries exhausted
            ├── ServerFault          HTTP 5xx, retries exhausted
            ├── BadRequest           any other HTTP 4xx, or a request that cannot be built
            ├── StreamBroke          an error event inside a stream
            └── ProtocolFailed       an answer that cannot be read

Each message is one line meant for the user. Each class also keeps the builtin base it had
(ValueError, KeyError, RuntimeError), so older `except` clauses still match. The modules that
raise these re-export them
(`engine.config.ConfigError`, `engine.job.JobError`, `engine.client.RequestFailed`, ...).
"""
from __future__ import annotations

from engine.outcome import EXIT_FAILED, EXIT_USAGE


class AutoIFError(Exception):
    """The root of every error the engine raises on purpose."""


class ConfigError(AutoIFError, ValueError):
    """One line naming the file (or flag) and the key at fault."""


class InputError(AutoIFError, ValueError):
    """An input file, or one of its lines, that cannot be used; the message says why."""


class PromptError(AutoIFError, KeyError):
    """A prompt template that is missing or does not render."""


class JobError(AutoIFError, RuntimeError):
    """A one-line reason the job could not run (no server, mismatched run dir, disk full)."""

    exit_code = EXIT_FAILED


class RefusedError(JobError):
    """Refused before any work: missing or bad input files, an unusable output directory."""

    exit_code = EXIT_USAGE


class ReportError(AutoIFError, RuntimeError):
    """One line: why no report could be made."""


class ServerError(AutoIFError, RuntimeError):
    """A server problem, with a one-line message meant for the user."""


class ServerStartError(ServerError):
    """The server exited or never became healthy while starting."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode  # exit status if it exited (negative: killed by that signal)


class LLMError(AutoIFError):
    """Asking an LLM server failed."""


class RequestFailed(LLMError):
    """A logical request that produced no result. `str(exc)` is a one-line reason.

    The subclass names the class of the last failure; `kind` is its short name (the key of the
    client's failure counters); `status` is the HTTP status when there was one; `attempts`
    counts the HTTP attempts made; `server` is the last server tried.
    """

    kind = "failed"

    def __init__(self, reason: str, *, kind: str | None = None, status: int | None = None,
                 attempts: int = 0, server: str = "") -> None:
        super().__init__(" ".join(reason.split()))
        if kind is not None:
            self.kind = kind
        self.status = status
        self.attempts = attempts
        self.server = server

    @property
    def reason(self) -> str:
        return str(self)

    @staticmethod
    def of(kind: str, reason: str, *, status: int | None = None, attempts: int = 0,
           server: str = "") -> RequestFailed:
        """The RequestFailed subclass for a failure kind."""
        cls = _BY_KIND.get(kind, RequestFailed)
        return cls(reason, kind=kind, status=status, attempts=attempts, server=server)


class ConnectFailed(RequestFailed):
    kind = "connect"


class RequestTimeout(RequestFailed):
    kind = "timeout"


class Disconnected(RequestFailed):
    kind = "disconnect"


class RateLimited(RequestFailed):
    kind = "http_429"


class ServerFault(RequestFailed):
    kind = "http_5xx"


class BadRequest(RequestFailed):
    kind = "http_4xx"


class StreamBroke(RequestFailed):
    kind = "stream_error"


class ProtocolFailed(RequestFailed):
    kind = "protocol"


_BY_KIND: dict[str, type[RequestFailed]] = {
    cls.kind: cls for cls in (ConnectFailed, RequestTimeout, Disconnected, RateLimited, ServerFault,
                              BadRequest, StreamBroke, ProtocolFailed)
}
