"""Wire format between the pool and its supervisors: orjson messages in length-prefixed frames.

The framing is multiprocess' Connection format (a big-endian signed 32-bit length,
or -1 followed by a 64-bit length for huge frames), so either end could also be
a stock Connection. The supervisor side is blocking (it has nothing else to do);
the pool side parses incrementally from a non-blocking socket.
"""

from __future__ import annotations

import os
import struct

_HDR = struct.Struct("!i")
_HDR_LONG = struct.Struct("!Q")


def header(n: int) -> bytes:
    return _HDR.pack(n) if n <= 0x7FFFFFFF else _HDR.pack(-1) + _HDR_LONG.pack(n)


def split_frames(buf: bytearray) -> tuple[list[memoryview], int]:
    """Complete frames at the start of `buf` (views into it) and how many bytes they span."""
    frames = []
    pos = 0
    view = memoryview(buf)
    while len(buf) - pos >= 4:
        (size,) = _HDR.unpack_from(buf, pos)
        start = pos + 4
        if size == -1:
            if len(buf) - pos < 12:
                break
            (size,) = _HDR_LONG.unpack_from(buf, start)
            start += 8
        elif size < 0:
            raise ValueError(f"invalid frame size {size}")
        if len(buf) - start < size:
            break
        frames.append(view[start:start + size])
        pos = start + size
    return frames, pos


def next_frame_size(buf: bytearray, pos: int) -> int | None:
    """Declared size of the (incomplete) frame starting at buf[pos], once its header is in."""
    if len(buf) - pos < 4:
        return None
    (size,) = _HDR.unpack_from(buf, pos)
    if size != -1:
        return size
    if len(buf) - pos < 12:
        return None
    return _HDR_LONG.unpack_from(buf, pos + 4)[0]


class Channel:
    """Blocking frame I/O on a connected socket fd (the supervisor's end)."""

    def __init__(self, fd: int):
        self.fd = fd

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(self.fd, min(n, 1 << 22))
            if not chunk:
                raise EOFError("pool connection closed")
            chunks.append(chunk)
            n -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def recv_bytes(self) -> bytes:
        (size,) = _HDR.unpack(self._read_exact(4))
        if size == -1:
            (size,) = _HDR_LONG.unpack(self._read_exact(8))
        return self._read_exact(size)

    def send_bytes(self, payload: bytes) -> None:
        data = memoryview(header(len(payload)) + payload)
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)
