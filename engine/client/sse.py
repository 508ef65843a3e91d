"""Incremental decoder for text/event-stream bodies (SGLang and OpenAI streams).

Lines are split by hand rather than with aiohttp's readline, whose 64 KiB line limit a
long cumulative-text chunk from SGLang's native stream can exceed.
"""
from __future__ import annotations


class SSEDecoder:
    """Feed bytes, get the `data` payloads of the events completed so far."""

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        buf += chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # blank line: the event is complete
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":..."), event:, id:, retry: carry nothing these servers use
        if start:
            del buf[:start]
        return events

    def flush(self) -> list[bytes]:
        """Events left when the body ended without a final blank line."""
        events = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf.clear()
        return events

