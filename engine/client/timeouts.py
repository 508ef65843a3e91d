"""`Timeouts`: how long the client waits, in seconds, for each kind of wait (httpx style)."""
from __future__ import annotations

from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class Timeouts:
    """`request`: a whole non-streamed attempt; `connect`: the TCP connect of any request;
    `stream_idle`: the longest silence inside a stream (a stream has no total limit: a long
    answer is not a hung one); `control`: health probes and admin calls."""

    request: float = 600.0
    connect: float = 10.0
    stream_idle: float = 120.0
    control: float = 10.0

    def attempt(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.request, sock_connect=self.connect)

    def stream(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=self.stream_idle)

    def control_call(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.control, sock_connect=self.connect)
