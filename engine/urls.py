"""What a server's base URL must look like: http(s), a host, and a port 1-65535 when it has one."""
from __future__ import annotations

from urllib.parse import urlsplit

PORT_MAX = 65535


def url_problem(url: str) -> str | None:
    """Why `url` is no server base URL, or None when it is one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "not an http(s) URL (expected http://HOST:PORT)"
    if not parts.hostname:
        return "the URL has no host (expected http://HOST:PORT)"
    try:
        given = parts.port
    except ValueError:
        given = -1
    if given is not None and not 1 <= given <= PORT_MAX:
        return f"the URL's port is not 1-{PORT_MAX}"
    return None
