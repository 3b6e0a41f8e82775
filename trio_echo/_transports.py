"""The transport interface the echo loop talks to, and the two base transports.

A :class:`Transport` moves bytes for one :class:`~trio_echo._connection.Connection`.
Receiving is split into a synchronous attempt (:meth:`Transport.try_receive`)
and a wait (:meth:`Transport.wait_receivable`), and sending into a synchronous
attempt (:meth:`Transport.send_now`) and a blocking remainder
(:meth:`Transport.send_all`), so that a plain socket needs no coroutine of its
own per operation: less work per round, and one suspended frame fewer for
every idle connection.

Two base transports own the client's bytes: :class:`SocketTransport` drives a
plain, non-blocking TCP socket directly, :class:`StreamTransport` any
:class:`trio.abc.Stream` (memory streams in tests).  Wrappers add one concern
each over any transport: TLS (:mod:`trio_echo._tls`) and injected faults
(:mod:`trio_echo._faults`).  A transport talks back to its connection only
through :class:`Owner`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import ClassVar, Final, Protocol

import trio

from ._protocol import Data

__all__ = ["Ended", "Owner", "SocketTransport", "StreamTransport", "Transport", "Wrapper"]

# SocketTransport's read state (see try_receive): read now; the last read was
# short, so yield first; yielded, so read, then wait for readability if empty.
_READ: Final = 0
_SHORT: Final = 1
_YIELDED: Final = 2

# Reads allowed in a drain without a trip through the scheduler: a client
# sending without pause must not keep the drain's deadline from being checked.
MAX_UNYIELDED_DRAIN: Final = 32


class Owner(Protocol):
    """What a transport (or a step before the echo loop) may ask of its connection.

    This is the whole of what wrappers know about the connection: they never
    touch its state otherwise.
    """

    #: ``host:port`` of the client, for log lines; a PROXY header may change it.
    peer: str

    def progress(self) -> None:
        """Bytes moved: the idle timeout counts from now."""

    def defer_idle(self, until: float) -> None:
        """The idle timeout counts from *until* at the earliest (a delay the
        server imposes is not the client's idleness)."""

    async def wait_as_idle(self, wait_for: Callable[[], Awaitable[None]]) -> None:
        """Run *wait_for* until it returns, the idle timeout passes, or the
        connection is stopped, whichever is first; never raises for the latter two."""

    def echoed(self, nbytes: int, *, whole: bool) -> None:
        """Count *nbytes* of an echo as sent by a transport that then ends the
        connection (raising :exc:`Ended`); *whole*: the echo went out in full."""


class Transport(Protocol):
    """How the echo loop moves bytes; see the module docstring for the split.

    Errors: a transport raises :exc:`trio.BrokenResourceError` or
    :exc:`ConnectionError` when the client broke the connection (close
    reason ``reset``), :exc:`Ended` when it ends the connection itself with
    a reason of its own, and :exc:`OSError` for anything else.
    """

    @property
    def half_close_after_eof(self) -> bool:
        """Whether the server still owes its side of the close after the client's
        EOF (TLS answers the client's ``close_notify``)."""

    def interrupt(self) -> None:
        """Make a task blocked in :meth:`wait_receivable` or :meth:`send_all`
        raise :exc:`trio.ClosedResourceError` at once, leaving the transport
        usable (the idle sweep and :meth:`Connection.stop` wake a connection so)."""

    def bind(self, owner: Owner | None) -> None:
        """Attach the connection (``None`` detaches it once closed)."""

    def try_receive(self) -> Data | None:
        """The next chunk if it can be had without blocking, ``b""`` at EOF, else ``None``.

        The chunk may be a view of a buffer shared by the whole server: use it
        before the next checkpoint.
        """

    def wait_receivable(self) -> Awaitable[None]:
        """Block until :meth:`try_receive` may have something.

        A plain method returning the awaitable, so that a socket can hand back
        ``trio.lowlevel.wait_readable`` itself: no wrapper frame while idle.
        """

    def send_now(self, data: Data) -> int:
        """Send what can be sent without blocking; return how many bytes that was."""

    async def send_all(self, data: Data) -> None:
        """Send all of *data*, blocking as needed (after :meth:`send_now` fell short)."""

    async def send_eof(self) -> None:
        """The server's side of a clean close (a TCP FIN, a TLS ``close_notify``)."""

    async def discard_until_eof(self) -> None:
        """Read and throw away until the client's EOF (bounded by the caller)."""

    async def close(self) -> None:
        """Close at once, releasing the socket; the caller shields it."""

    def socket(self) -> socket.socket | trio.socket.SocketType | None:
        """The OS socket underneath, if there is one."""


class Ended(Exception):
    """Raised by a transport or a step before the echo loop to end the
    connection with *reason*; *drain*: close cleanly (half-close, bounded
    drain) rather than at once."""

    def __init__(self, reason: str, *, drain: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.drain = drain


class SocketTransport:
    """A plain, non-blocking TCP socket, driven directly.

    Reads go into *buffer*, which the server shares among all its
    connections: trio runs one task at a time, and an echo that cannot be
    sent at once is copied out before this task blocks (:meth:`send_all`), so
    no other connection can overwrite it.  An idle connection therefore holds
    no receive buffer at all.
    """

    half_close_after_eof: ClassVar[bool] = False

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


class WaitScopes:
    """A cancel scope per blocking wait, for a transport whose waits no
    ``notify_closing`` can reach (a stream): :meth:`interrupt` cancels the
    current one, and the wait raises :exc:`trio.ClosedResourceError`."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: trio.CancelScope | None = None

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Run the body as one interruptible wait.

        Raises:
          trio.ClosedResourceError: :meth:`interrupt` ended the wait.
        """
        scope = self._current = trio.CancelScope()
        try:
            with scope:
                yield
        finally:
            self._current = None
        if scope.cancelled_caught:
            raise trio.ClosedResourceError("woken by interrupt()")

    def interrupt(self) -> None:
        """End the current wait, if any."""
        if self._current is not None:
            self._current.cancel()


class Wrapper:
    """A transport that adds one concern over *inner*: everything it does not
    override goes to *inner* unchanged (TLS, faults)."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self._owner: Owner | None = None

    @property
    def half_close_after_eof(self) -> bool:
        return self._inner.half_close_after_eof

    def interrupt(self) -> None:
        self._inner.interrupt()

    def bind(self, owner: Owner | None) -> None:
        self._owner = owner
        self._inner.bind(owner)

    def try_receive(self) -> Data | None:
        return self._inner.try_receive()

    def wait_receivable(self) -> Awaitable[None]:
        return self._inner.wait_receivable()

    def send_now(self, data: Data) -> int:
        return self._inner.send_now(data)

    async def send_all(self, data: Data) -> None:
        await self._inner.send_all(data)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def discard_until_eof(self) -> None:
        await self._inner.discard_until_eof()

    async def close(self) -> None:
        await self._inner.close()

    def socket(self) -> socket.socket | trio.socket.SocketType | None:
        return self._inner.socket()
