"""The interfaces around the echo loop: transports, the steps before it, and its Owner side.

A :class:`Transport` moves bytes for one :class:`~trio_echo._connection.Connection`.
Receiving is split into a synchronous attempt (:meth:`Transport.try_receive`)
and a wait (:meth:`Transport.wait_receivable`), and sending into a synchronous
attempt (:meth:`Transport.send_now`) and a blocking remainder
(:meth:`Transport.send_all`), so that a plain socket needs no coroutine of its
own per operation: less work per round, and one suspended frame fewer for
every idle connection.

Two base transports own the client's bytes (:mod:`trio_echo._streams`):
``SocketTransport`` drives a plain, non-blocking TCP socket directly,
``StreamTransport`` any :class:`trio.abc.Stream` (memory streams in tests).
Wrappers add one concern each over any transport: TLS (:mod:`trio_echo._tls`)
and injected faults (:mod:`trio_echo._faults`).  A transport talks back to its
connection only through :class:`Owner`; a step before the echo loop
(:class:`Step`) likewise.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import trio

from ._protocol import Data

__all__ = ["Ended", "Owner", "Step", "Transport", "WaitScopes", "Wrapper"]


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

    @property
    def close_delay(self) -> float:
        """Seconds the server's side of a clean close may spend before the drain
        starts (an injected ``slow_close``); the drain's bound adds it."""

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


class Step(Protocol):
    """One step before the echo loop (a PROXY header, a TLS handshake).

    :meth:`Connection.serve` runs the steps in order, each in a cancel scope
    with its :attr:`timeout` that :meth:`Connection.stop` cancels (close
    reason ``shutdown``).  A step ends the connection by raising
    :exc:`~trio_echo._transports.Ended`; errors are handled as in the loop.
    """

    #: Seconds the step may take (``math.inf``: unbounded).
    timeout: float

    async def run(self, owner: Owner) -> None:
        """Do the step; raise :exc:`~trio_echo._transports.Ended` to end the connection."""

    def timed_out(self, owner: Owner) -> Ended:
        """Log that the step did not finish in time; the exception that ends the connection."""


class Ended(Exception):
    """Raised by a transport or a step before the echo loop to end the
    connection with *reason*; *drain*: close cleanly (half-close, bounded
    drain) rather than at once."""

    def __init__(self, reason: str, *, drain: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.drain = drain


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

    @property
    def active(self) -> bool:
        """Whether a wait is in progress."""
        return self._current is not None

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

    @property
    def close_delay(self) -> float:
        return self._inner.close_delay

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
