"""The pool's end of one worker's socket: non-blocking framed I/O on the event loop.

The event loop never blocks on a worker: the socket is registered with loop.add_reader and,
while a send is backed up, loop.add_writer. Frames are in channel.py's format (the one
multiprocess' Connection uses), assembled here incrementally.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Callable

from ..channel import header, next_frame_size, split_frames


class Connection:
    """Frame I/O on a non-blocking socket, driven by the event loop."""

    __slots__ = ("_conn", "fd", "_loop", "rbuf", "wbuf", "_writing", "_on_write_error", "closed")

    def __init__(self, conn, loop: asyncio.AbstractEventLoop, on_readable: Callable[[], None],
                 on_write_error: Callable[[OSError], None]):
        self._conn = conn  # the multiprocess Connection: it owns the fd
        self.fd = conn.fileno()
        self._loop = loop
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self._writing = False
        # A send that fails once it was buffered: the last frame was not all written.
        self._on_write_error = on_write_error
        self.closed = False
        os.set_blocking(self.fd, False)
        _widen_send_buffer(self.fd)
        loop.add_reader(self.fd, on_readable)

    def send(self, parts: list) -> None:
        """Send `parts` as one frame. Raises OSError when none of it could be written: then
        the peer never saw the frame."""
        n = sum(map(len, parts))
        head = header(n)
        if self.wbuf:  # already backed up: queue behind what is pending
            self.wbuf += head
            for p in parts:
                self.wbuf += p
            return
        try:
            sent = os.writev(self.fd, [head, *parts])  # no joining copy of a large inputs payload
        except BlockingIOError:
            sent = 0
        if sent < len(head) + n:
            self.wbuf += memoryview(b"".join([head, *parts]))[sent:]
            self._flush()

    def _flush(self) -> None:
        try:
            while self.wbuf:
                sent = os.write(self.fd, self.wbuf)
                del self.wbuf[:sent]
        except BlockingIOError:
            pass
        except OSError as e:
            self._on_write_error(e)
            return
        if self.wbuf and not self._writing:
            self._loop.add_writer(self.fd, self._flush)
            self._writing = True
        elif not self.wbuf and self._writing:
            self._loop.remove_writer(self.fd)
            self._writing = False

    def read(self) -> bool:
        """Buffer what the socket has; False at end of file. Raises OSError (but not
        BlockingIOError) when the connection is broken."""
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.rbuf += data
        return True

    def handle_frames(self, handle: Callable[[memoryview], bool]) -> None:
        """Pass each complete buffered frame to `handle` until it returns False. The frames
        are consumed even if `handle` raises: none is ever parsed twice."""
        buf = self.rbuf
        frames, used = split_frames(buf)
        try:
            for frame in frames:
                if not handle(frame):
                    return
        finally:
            for frame in frames:
                frame.release()
            del buf[:used]

    def pending_size(self) -> int | None:
        """The declared size of the incomplete frame buffered, once its header is in."""
        return next_frame_size(self.rbuf, 0)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self.fd)
            if self._writing:
                self._loop.remove_writer(self.fd)
        except Exception:
            pass
        try:
            self._conn.close()
        except Exception:
            pass


def _widen_send_buffer(fd: int) -> None:
    # A job carrying a few hundred responses is ~0.2-1 MB; let it go out in one write.
    sock = socket.socket(fileno=fd)
    try:
        for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                break
            except OSError:
                continue
    finally:
        sock.detach()
