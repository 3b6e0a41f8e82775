"""The per-connection trio loop around :class:`~trio_echo._protocol.EchoProtocol`.

One :class:`Connection` per accepted client.  The loop reads, lets the protocol
decide what to echo, sends it, and repeats until the protocol says it is done;
then it closes cleanly: half-close, discard the client's remaining input for a
bounded time, close.  Every way a connection can end becomes a close *reason*
here, at the connection boundary, so no error ever reaches the server's nursery.

Two transports share that loop: :class:`SocketConnection` drives a plain TCP
socket directly (non-blocking ``recv_into`` into a buffer shared by the whole
server, ``wait_readable`` only when the socket is empty), and
:class:`StreamConnection` drives any :class:`trio.abc.Stream` (TLS, memory
streams in tests).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import ClassVar, Final

import trio

from ._config import ConnectionConfig
from ._protocol import EOF, SHUTDOWN, Data, EchoProtocol

__all__ = ["Connection", "SocketConnection", "StreamConnection"]

LOGGER = logging.getLogger("trio_echo")

# Close reasons decided here rather than by the protocol.
IDLE: Final = "idle"
RESET: Final = "reset"
CANCELLED: Final = "cancelled"
ERROR: Final = "error"

_NOTHING: Final = b""

# Loop iterations allowed without a trip through the scheduler: a client whose
# data is always ready must not starve the other connections.
MAX_UNYIELDED: Final = 32

# The idle deadline is moved only when it is this close to stale, so that a
# busy connection does not re-key trio's deadline heap on every round; the
# timeout then fires between idle_timeout and idle_timeout * (1 + IDLE_SLACK).
IDLE_SLACK: Final = 0.05


class Connection:
    """One client connection: the echo loop and its clean close.

    Use :meth:`serve` once; it returns the close reason and never raises
    anything but :exc:`trio.Cancelled` (after closing the transport).

    Cancellation:
      :meth:`stop` asks for a graceful stop: a connection waiting for input
      stops waiting at once, one busy echoing finishes the echo in progress;
      either way every byte already read is echoed, then the connection
      half-closes and closes. Cancelling the task running :meth:`serve`
      closes the transport at once.
    """

    #: Whether the server's side of the close handshake is still owed after
    #: the client's EOF (TLS answers the client's close_notify).
    HALF_CLOSE_AFTER_EOF: ClassVar[bool] = False

    # Slots, not a __dict__: a server may hold tens of thousands of these.
    __slots__ = (
        "_clock",
        "_config",
        "_deadline",
        "_idle",
        "_on_close",
        "_protocol",
        "_receiving",
        "_scope",
        "_stopping",
        "_unsent",
        "_unyielded",
        "bytes_in",
        "bytes_out",
        "initial",
        "peer",
        "reason",
        "rounds",
        "started",
    )

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        peer: str,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.peer = peer
        self.started = trio.current_time()
        self.rounds = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None
        #: Bytes the server read from the peer before the echo loop (those after a
        #: PROXY header): the connection's first input, as if just received.
        self.initial: Data = b""
        self._config = config
        self._protocol = EchoProtocol(
            framing=config.framing, rounds=config.rounds, max_message=config.max_message
        )
        self._idle = config.idle_timeout
        self._scope = trio.CancelScope()
        self._deadline = math.inf
        self._stopping = False
        self._receiving = False
        self._unyielded = 0
        self._unsent: Data = b""
        self._on_close = on_close
        self._clock = trio.lowlevel.current_clock()

    # ---- transport hooks, implemented by subclasses ----
    #
    # Receiving is split into a synchronous attempt and a wait, and sending into
    # a synchronous attempt and a blocking remainder, so that a plain socket
    # needs no coroutine of its own per operation: less work per round, and one
    # suspended frame fewer for every idle connection.

    def _try_receive(self) -> Data | None:
        """The next chunk if it can be had without blocking, ``b""`` at EOF, else ``None``."""
        raise NotImplementedError

    def _wait_receivable(self) -> Awaitable[None]:
        """Block until :meth:`_try_receive` may have something.

        A plain method returning the awaitable, so that a socket can hand back
        ``trio.lowlevel.wait_readable`` itself: no wrapper frame while idle.
        """
        raise NotImplementedError

    def _send_now(self, data: Data) -> int:
        """Send what can be sent without blocking; return how many bytes that was."""
        raise NotImplementedError

    async def _send_all(self, data: Data) -> None:
        """Send all of *data*, blocking as needed (after :meth:`_send_now` fell short)."""
        raise NotImplementedError

    async def _send_eof(self) -> None:
        raise NotImplementedError

    async def _discard_until_eof(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    # ---- the loop ----

    def stop(self) -> None:
        """Ask for a graceful stop (see the class docstring)."""
        self._stopping = True
        if self._receiving:
            self._scope.cancel()

    async def serve(self) -> str:
        """Echo until done, close, and return the close reason.

        The echo loop is written out here rather than in methods of its own:
        every coroutine level costs each waiting connection a suspended frame,
        and a server may hold tens of thousands of them.
        """
        reason = ERROR
        try:
            early = await self._start()
            if early is not None:
                reason = early
                return reason
            protocol = self._protocol
            if self._idle is not None:
                # With the slack from the start, the deadline need not move
                # again before a short-lived connection ends.
                self._move_idle_deadline(
                    self._clock.current_time() + self._idle * (1 + IDLE_SLACK)
                )
            with self._scope:
                while True:
                    data = self._try_initial() if self.initial else self._try_receive()
                    if data is None:
                        if self._stopping:
                            break
                        self._arm_idle()
                        self._receiving = True
                        try:
                            await self._wait_receivable()
                        finally:
                            self._receiving = False
                        self._unyielded = 0
                        continue
                    out = self._take(data)
                    if self._stopping:
                        # stop() may have cancelled this scope just as the data
                        # arrived; the echo is sent after it, bounded by the grace.
                        self._unsent = bytes(out)
                        break
                    if out:
                        sent = self._send_now(out)
                        if sent != len(out):
                            await self._send_all(memoryview(out)[sent:])
                        self.bytes_out += len(out)
                        self.rounds = protocol.rounds
                    if protocol.reason is not None:
                        break
                    # Drop the views of the shared buffer before waiting again.
                    data = out = _NOTHING
                    self._unyielded += 1
                    if self._unyielded >= MAX_UNYIELDED:
                        # Busy without ever blocking: count it as progress, and
                        # let the other connections run.
                        self._unyielded = 0
                        self._arm_idle()
                        await trio.lowlevel.checkpoint()
            reason = await self._finish()
        except trio.Cancelled:
            reason = SHUTDOWN if self._stopping else CANCELLED
            raise
        except (trio.BrokenResourceError, ConnectionError) as exc:
            reason = self._broken(exc)
        except OSError as exc:
            LOGGER.warning("%s: closing after a socket error: %s", self.peer, exc)
        except Exception:
            LOGGER.exception("%s: unexpected error; closing the connection", self.peer)
        finally:
            self.reason = reason
            with trio.CancelScope(shield=True):
                await self._close()
            if self._on_close is not None:
                self._on_close(self)
        return reason

    async def _start(self) -> str | None:
        """Anything to do before echoing (a TLS handshake); a close reason ends
        the connection there."""
        return None

    def _try_initial(self) -> Data:
        """The next chunk of :attr:`initial` (not empty) as if received: at most
        max_message bytes, the most one receive returns."""
        initial = self.initial
        step = self._config.max_message
        self.initial = initial[step:]
        return initial[:step]

    def _take(self, data: Data) -> Data:
        """Feed one chunk (``b""``: EOF) to the protocol; return what to echo."""
        if data:
            self.bytes_in += len(data)
            return self._protocol.receive_data(data)
        return self._protocol.receive_eof()

    async def _finish(self) -> str:
        """After the echo loop: echo what a stop left over, decide the reason, close."""
        protocol = self._protocol
        if self._stopping:
            await self._send(self._unsent)
            reason = protocol.reason
            if reason is None:
                reason = SHUTDOWN
                await self._send(protocol.finish())
        elif self._scope.cancelled_caught:
            # No progress for idle_timeout, possibly in the middle of an echo.
            reason = IDLE
        else:
            reason = protocol.reason
            assert reason is not None
        if reason != EOF or self.HALF_CLOSE_AFTER_EOF:
            await self._half_close_and_drain()
        return reason

    def _broken(self, exc: trio.BrokenResourceError | ConnectionError) -> str:
        """The close reason for a transport that broke under the echo loop."""
        LOGGER.debug("%s: %s", self.peer, exc or type(exc).__name__)
        return RESET

    async def _half_close_and_drain(self) -> None:
        """Send EOF, then read and discard until the client's EOF, for a bounded time.

        Closing a socket with unread input makes the kernel send a reset, which
        can destroy echoes still waiting in the client's receive buffer; draining
        first lets the client read everything, then see a clean EOF.  The reason
        is already decided: a client resetting now changes nothing.
        """
        try:
            await self._send_eof()
            with trio.move_on_after(self._config.drain_timeout):
                await self._discard_until_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            LOGGER.debug("%s: while closing: %s", self.peer, exc or type(exc).__name__)

    async def _send(self, out: Data) -> None:
        if out:
            sent = self._send_now(out)
            if sent != len(out):
                await self._send_all(memoryview(out)[sent:])
            self.bytes_out += len(out)
        self.rounds = self._protocol.rounds

    def _arm_idle(self) -> None:
        """Keep the idle deadline at least idle_timeout away: called on progress,
        right before the connection blocks."""
        idle = self._idle
        if idle is not None:
            deadline = self._clock.current_time() + idle
            if deadline > self._deadline:
                self._move_idle_deadline(deadline + idle * IDLE_SLACK)

    def _move_idle_deadline(self, deadline: float) -> None:
        # Mirrored in a plain attribute: reading CancelScope.deadline is a
        # property call, and _arm_idle runs before every wait.
        self._deadline = deadline
        self._scope.deadline = deadline


class SocketConnection(Connection):
    """A connection on a plain, non-blocking TCP socket, driven directly.

    Reads go into *buffer*, which the server shares among all its
    connections: trio runs one task at a time, and an echo that cannot be
    sent at once is copied out before this task blocks, so no other
    connection can overwrite it.  An idle connection therefore holds no
    receive buffer at all.
    """

    __slots__ = ("_buffer", "_maybe_ready", "_sock", "_yield_first")

    def __init__(
        self,
        sock: socket.socket,
        config: ConnectionConfig,
        *,
        peer: str,
        buffer: memoryview,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        super().__init__(config, peer=peer, on_close=on_close)
        self._sock = sock
        self._buffer = buffer
        # A new client has often sent its first message already.
        self._maybe_ready = True
        self._yield_first = False

    def _try_receive(self) -> Data | None:
        # Right after a short read (the request/response case) the client has
        # not answered yet: rather than fail a recv() now, let the other
        # connections run first (a plain checkpoint) and read afterwards.  On a
        # busy server the answer is there by then, so the read needs no
        # wait_readable -- no epoll_ctl() and no I/O wake-up per round.  Only if
        # it is still not there does the connection wait for readability.
        if not self._maybe_ready:
            self._maybe_ready = True
            self._yield_first = True
            return None
        self._yield_first = False
        try:
            n = self._sock.recv_into(self._buffer)
        except BlockingIOError:
            return None
        # A full buffer means more may be waiting: read again at once.
        self._maybe_ready = n == len(self._buffer)
        return self._buffer[:n]

    def _wait_receivable(self) -> Awaitable[None]:
        if self._yield_first:
            return trio.lowlevel.checkpoint()  # noqa: ASYNC105 -- awaited by the caller
        return trio.lowlevel.wait_readable(self._sock)  # noqa: ASYNC105 -- likewise

    def _send_now(self, data: Data) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    async def _send_all(self, data: Data) -> None:
        sock = self._sock
        # Copy out of the shared buffer before blocking (see the class docstring).
        rest = memoryview(bytes(data))
        # The receive that led here was progress too, however long it waited.
        self._arm_idle()
        while rest:
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(rest)
            except BlockingIOError:
                continue
            rest = rest[sent:]
            self._arm_idle()
        self._unyielded = 0

    async def _send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._sock.shutdown(socket.SHUT_WR)

    async def _discard_until_eof(self) -> None:
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
                if reads % MAX_UNYIELDED == 0:
                    # A client sending without pause must not keep the drain's
                    # deadline from being checked, nor starve other connections.
                    await trio.lowlevel.checkpoint()

    async def _close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await trio.lowlevel.checkpoint_if_cancelled()


class StreamConnection(Connection):
    """A connection on any :class:`trio.abc.Stream` (TLS, memory streams, ...).

    Half-closing uses :meth:`~trio.abc.HalfCloseableStream.send_eof` where the
    stream has it; otherwise the server's side of the close is the close itself.
    """

    __slots__ = ("_received", "_stream")

    def __init__(
        self,
        stream: trio.abc.Stream,
        config: ConnectionConfig,
        *,
        peer: str,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        super().__init__(config, peer=peer, on_close=on_close)
        self._stream = stream
        self._received: Data | None = None

    def _try_receive(self) -> Data | None:
        data, self._received = self._received, None
        return data

    async def _wait_receivable(self) -> None:
        self._received = await self._stream.receive_some(self._config.max_message)

    def _send_now(self, data: Data) -> int:
        return 0

    async def _send_all(self, data: Data) -> None:
        self._arm_idle()
        await self._stream.send_all(data)

    async def _send_eof(self) -> None:
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()

    async def _discard_until_eof(self) -> None:
        while await self._stream.receive_some(self._config.max_message):
            pass

    async def _close(self) -> None:
        await trio.aclose_forcefully(self._stream)


def format_peer(address: object) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6, ``str()`` otherwise."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
