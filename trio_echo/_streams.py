"""The two base transports: a plain socket driven directly, and any trio Stream.

Both implement :class:`~trio_echo._transports.Transport`; TLS and faults wrap
either.  The plain socket's path is the hot one: no coroutine per operation,
the server's shared receive buffer, ``wait_readable`` handed back as it is.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable
from typing import ClassVar, Final

import trio

from ._protocol import Data
from ._transports import Owner, WaitScopes

__all__ = ["SocketTransport", "StreamTransport"]

# SocketTransport's read state (see try_receive): read now; the last read was
# short, so yield first; yielded, so read, then wait for readability if empty.
_READ: Final = 0
_SHORT: Final = 1
_YIELDED: Final = 2

# Reads allowed in a drain without a trip through the scheduler: a client
# sending without pause must not keep the drain's deadline from being checked.
MAX_UNYIELDED_DRAIN: Final = 32


class SocketTransport:
    """A plain, non-blocking TCP socket, driven directly.

    Reads go into *buffer*, which the server shares among all its
    connections: trio runs one task at a time, and an echo that cannot be
    sent at once is copied out before this task blocks (:meth:`send_all`), so
    no other connection can overwrite it.  An idle connection therefore holds
    no receive buffer at all.
    """

    half_close_after_eof: ClassVar[bool] = False
    close_delay: ClassVar[float] = 0.0

    # Slots, not a __dict__: a server may hold tens of thousands of these.
    __slots__ = ("_buffer", "_owner", "_sock", "_state", "_unread")

    def __init__(self, sock: socket.socket, *, buffer: memoryview) -> None:
        self._sock = sock
        self._buffer = buffer
        self._owner: Owner | None = None
        # A new client has often sent its first message already: read at once.
        self._state = _READ
        self._unread = b""

    def interrupt(self) -> None:
        # Unregisters the socket from epoll and wakes its waiters with
        # ClosedResourceError; the next wait registers it again.  No cancel
        # scope per connection: an idle connection is lighter (see _idle).
        trio.lowlevel.notify_closing(self._sock)

    def bind(self, owner: Owner | None) -> None:
        self._owner = owner

    def unread(self, data: bytes) -> None:
        """Hand *data* (at most one receive's worth, read by a step before the
        echo loop) back: the next :meth:`try_receive` returns it."""
        self._unread = data

    def try_receive(self) -> Data | None:
        # Right after a short read (the request/response case) the client has
        # not answered yet: rather than fail a recv() now, let the other
        # connections run first (a plain checkpoint) and read afterwards.  On a
        # busy server the answer is there by then, so the read needs no
        # wait_readable -- no epoll_ctl() and no I/O wake-up per round.  Only if
        # it is still not there does the connection wait for readability.
        if self._state == _SHORT:
            self._state = _YIELDED
            return None
        if self._unread:
            data, self._unread = self._unread, b""
            return data
        self._state = _READ
        try:
            n = self._sock.recv_into(self._buffer)
        except BlockingIOError:
            return None
        # A full buffer means more may be waiting: read again at once.
        if n != len(self._buffer):
            self._state = _SHORT
        return self._buffer[:n]

    def wait_receivable(self) -> Awaitable[None]:
        if self._state == _YIELDED:
            return trio.lowlevel.checkpoint()  # noqa: ASYNC105 -- awaited by the caller
        return trio.lowlevel.wait_readable(self._sock)  # noqa: ASYNC105 -- likewise

    def send_now(self, data: Data) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    async def send_all(self, data: Data) -> None:
        sock = self._sock
        # Copy out of the shared buffer before blocking (see the class docstring).
        rest = memoryview(bytes(data))
        while rest:
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(rest)
            except BlockingIOError:
                continue
            rest = rest[sent:]
            if self._owner is not None:
                self._owner.progress()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._sock.shutdown(socket.SHUT_WR)

    async def discard_until_eof(self) -> None:
        sock = self._sock
        buffer = self._buffer
        reads = 0
        while True:
            try:
                if not sock.recv_into(buffer):
                    return
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            else:
                reads += 1
                if reads % MAX_UNYIELDED_DRAIN == 0:
                    await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await trio.lowlevel.checkpoint_if_cancelled()

    def socket(self) -> socket.socket:
        return self._sock


class StreamTransport:
    """Any :class:`trio.abc.Stream` (memory streams in tests, a TLS stream's plaintext).

    Half-closing uses :meth:`~trio.abc.HalfCloseableStream.send_eof` where the
    stream has it; otherwise the server's side of the close is the close itself.
    """

    half_close_after_eof: ClassVar[bool] = False
    close_delay: ClassVar[float] = 0.0

    __slots__ = ("_max_bytes", "_received", "_stream", "_unread", "_waits")

    def __init__(self, stream: trio.abc.Stream, *, max_bytes: int) -> None:
        self._waits = WaitScopes()
        self._stream = stream
        self._max_bytes = max_bytes
        self._received: Data | None = None
        self._unread = b""

    def interrupt(self) -> None:
        self._waits.interrupt()

    def bind(self, owner: Owner | None) -> None:
        pass

    def unread(self, data: bytes) -> None:
        """As :meth:`SocketTransport.unread`."""
        self._unread = data

    def try_receive(self) -> Data | None:
        if self._unread:
            unread, self._unread = self._unread, b""
            return unread
        data, self._received = self._received, None
        return data

    async def wait_receivable(self) -> None:
        with self._waits.waiting():
            self._received = await self._stream.receive_some(self._max_bytes)

    def send_now(self, data: Data) -> int:
        return 0

    async def send_all(self, data: Data) -> None:
        with self._waits.waiting():
            await self._stream.send_all(data)

    async def send_eof(self) -> None:
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()
        else:
            await trio.lowlevel.checkpoint()

    async def discard_until_eof(self) -> None:
        while await self._stream.receive_some(self._max_bytes):
            pass

    async def close(self) -> None:
        await trio.aclose_forcefully(self._stream)

    def socket(self) -> trio.socket.SocketType | None:
        stream: object = self._stream
        while not isinstance(stream, trio.SocketStream):
            stream = getattr(stream, "transport_stream", None)
            if stream is None:
                return None
        return stream.socket
