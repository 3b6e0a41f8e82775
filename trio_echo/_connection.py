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
import socket
from typing import Final

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

    def __init__(self, config: ConnectionConfig, *, peer: str) -> None:
        self.peer = peer
        self.rounds = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None
        self._config = config
        self._protocol = EchoProtocol(
            framing=config.framing, rounds=config.rounds, max_message=config.max_message
        )
        self._idle = config.idle_timeout
        self._scope = trio.CancelScope()
        self._stopping = False
        self._receiving = False
        self._unyielded = 0
        self._unsent: Data = b""

    # ---- transport hooks, implemented by subclasses ----

    async def _receive(self) -> Data:
        """Return the next chunk from the peer, ``b""`` at EOF."""
        raise NotImplementedError

    async def _send_all(self, data: Data) -> None:
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
        """Echo until done, close, and return the close reason."""
        reason = ERROR
        try:
            reason = await self._echo_then_close()
        except trio.Cancelled:
            reason = SHUTDOWN if self._stopping else CANCELLED
            raise
        except (trio.BrokenResourceError, ConnectionError) as exc:
            reason = RESET
            LOGGER.debug("%s: %s", self.peer, exc or type(exc).__name__)
        except OSError as exc:
            LOGGER.warning("%s: closing after a socket error: %s", self.peer, exc)
        except Exception:
            LOGGER.exception("%s: unexpected error; closing the connection", self.peer)
        finally:
            self.reason = reason
            with trio.CancelScope(shield=True):
                await self._close()
        return reason

    async def _echo_then_close(self) -> str:
        protocol = self._protocol
        # Read the clock directly on the hot path, skipping trio.current_time()'s lookups.
        self._clock = trio.lowlevel.current_clock()
        if self._idle is not None:
            self._scope.deadline = self._clock.current_time() + self._idle
        with self._scope:
            await self._echo_loop(protocol)
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
        if reason != EOF:
            await self._half_close_and_drain()
        return reason

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

    async def _echo_loop(self, protocol: EchoProtocol) -> None:
        receive = self._receive
        send_all = self._send_all
        receive_data = protocol.receive_data
        while not self._stopping:
            data = await receive()
            if data:
                self.bytes_in += len(data)
                out = receive_data(data)
            else:
                out = protocol.receive_eof()
            if self._stopping:
                # stop() may have cancelled this scope just as the data arrived;
                # the echo is sent after the scope, still bounded by the grace.
                self._unsent = bytes(out)
                return
            if out:
                await send_all(out)
                self.bytes_out += len(out)
                self.rounds = protocol.rounds
            if protocol.reason is not None:
                return
            self._unyielded += 1
            if self._unyielded >= MAX_UNYIELDED:
                # Busy without ever blocking: count it as progress, and let the
                # other connections run.
                self._unyielded = 0
                self._arm_idle()
                await trio.lowlevel.checkpoint()

    async def _send(self, out: Data) -> None:
        if out:
            await self._send_all(out)
            self.bytes_out += len(out)
        self.rounds = self._protocol.rounds

    def _arm_idle(self) -> None:
        """Keep the idle deadline at least idle_timeout away: called on progress,
        right before the connection blocks."""
        idle = self._idle
        if idle is not None:
            deadline = self._clock.current_time() + idle
            if deadline > self._scope.deadline:
                self._scope.deadline = deadline + idle * IDLE_SLACK


class SocketConnection(Connection):
    """A connection on a plain, non-blocking TCP socket, driven directly.

    Reads go into *buffer*, which the server shares among all its
    connections: trio runs one task at a time, and an echo that cannot be
    sent at once is copied out before this task blocks, so no other
    connection can overwrite it.  An idle connection therefore holds no
    receive buffer at all.
    """

    def __init__(
        self, sock: socket.socket, config: ConnectionConfig, *, peer: str, buffer: memoryview
    ) -> None:
        super().__init__(config, peer=peer)
        self._sock = sock
        self._buffer = buffer
        # A new client has often sent its first message already.
        self._maybe_ready = True

    async def _receive(self) -> Data:
        sock = self._sock
        buffer = self._buffer
        # Try the socket first only when data is likely waiting; after a short
        # read (the usual request/response case) go straight to waiting, which
        # saves a failing recv() and its exception per round.
        ready = self._maybe_ready
        while True:
            if ready:
                try:
                    n = sock.recv_into(buffer)
                except BlockingIOError:
                    pass
                else:
                    self._maybe_ready = n == len(buffer)
                    return buffer[:n]
            self._arm_idle()
            self._receiving = True
            try:
                await trio.lowlevel.wait_readable(sock)
            finally:
                self._receiving = False
            self._unyielded = 0
            ready = True

    async def _send_all(self, data: Data) -> None:
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        # Copy out of the shared buffer before blocking (see the class docstring).
        rest = memoryview(bytes(memoryview(data)[sent:]))
        while rest:
            if sent:
                self._arm_idle()
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(rest)
            except BlockingIOError:
                sent = 0
            rest = rest[sent:]
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

    def __init__(self, stream: trio.abc.Stream, config: ConnectionConfig, *, peer: str) -> None:
        super().__init__(config, peer=peer)
        self._stream = stream

    async def _receive(self) -> Data:
        self._arm_idle()
        self._receiving = True
        try:
            return await self._stream.receive_some(self._config.max_message)
        finally:
            self._receiving = False

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
