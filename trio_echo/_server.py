"""``serve()``: listeners, the accept loop with its connection limit, graceful shutdown."""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import random
import socket
import ssl
from collections.abc import Sequence
from typing import Final

import attrs
import trio

from ._config import ConnectionConfig, ServerConfig
from ._connection import (
    CANCELLED,
    RESET,
    Connection,
    SocketConnection,
    StreamConnection,
    format_peer,
)
from ._faults import (
    FaultInjector,
    FaultySocketConnection,
    FaultyStreamConnection,
    FaultyTLSConnection,
    describe,
)
from ._logs import event
from ._protocol import SHUTDOWN
from ._proxy import MAX_HEADER, ProxyHeader, ProxyProtocolError, parse_proxy_header
from ._stats import ServerStatistics, Tally
from ._tls import TLSConnection, server_context

__all__ = ["EchoServer", "serve"]

LOGGER = logging.getLogger("trio_echo")

# Errors that accept(2) returns when the system is overloaded (as in trio's
# serve_listeners): log, wait, retry -- never crash, never spin.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)

# How long to wait after one of those before calling accept() again.
ACCEPT_RETRY_DELAY: Final = 0.100

#: Close reason of a connection without a valid PROXY header (``proxy_protocol``).
PROXY_ERROR: Final = "proxy-error"

# At most one "connection limit reached" or accept-error warning per this many
# seconds, so a flood cannot flood the log too.
WARNING_INTERVAL: Final = 10.0


class EchoServer:
    """A running echo server: what ``await nursery.start(serve, config)`` returns.

    Do not construct it yourself; :func:`serve` does.  The handle is live:
    :meth:`statistics` reads the counters at the moment it is called, and
    :meth:`shutdown` stops the server gracefully.  It stays usable after the
    server has stopped (``addresses``, ``port`` and ``statistics()`` keep
    their last values; ``shutdown()`` returns at once).
    """

    def __init__(
        self,
        config: ServerConfig,
        listeners: list[trio.SocketListener],
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self._ssl_context = ssl_context
        self.listeners: tuple[trio.SocketListener, ...] = tuple(listeners)
        # Read once: the listeners are closed at shutdown, the handle outlives them.
        names = [listener.socket.getsockname() for listener in listeners]
        self._addresses = tuple((str(name[0]), int(name[1])) for name in names)
        self._tally = Tally()
        self._active: set[Connection] = set()
        # Connections still sending their PROXY header: open, but not echoing yet.
        self._handshaking: set[_Handshake] = set()
        self._slots = trio.Semaphore(config.listener.max_connections)
        # One receive buffer for every plain-TCP connection (see SocketConnection).
        self._buffer = memoryview(bytearray(config.connection.max_message))
        # One bound method for all connections, not one per connection.
        self._on_close = self._connection_closed
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        self._stopping = False
        # When each kind of warning was last logged (see _warn).
        self._last_warning: dict[str, float] = {}
        faults = config.connection.faults
        self._faults_on = faults.enabled
        # Drawn once per server, and logged, so that a run without a seed can
        # be replayed with --seed.
        self._fault_seed = faults.seed
        if self._fault_seed is None and faults.jitter:
            self._fault_seed = random.SystemRandom().randrange(2**32)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every bound ``(host, port)``: one per listener (IPv4 and IPv6 may differ)."""
        return self._addresses

    @property
    def port(self) -> int:
        """The bound port of the first listener (the real one when configured as ``0``)."""
        return self.addresses[0][1]

    def statistics(self) -> ServerStatistics:
        """A frozen snapshot of the server's counters, open connections included.

        Synchronous and cheap (it walks the open connections); never raises.
        """
        return self._tally.snapshot(itertools.chain(self._active, self._handshaking))

    def request_shutdown(self) -> None:
        """Start a graceful shutdown (see :meth:`shutdown`) without waiting for it.

        Synchronous, idempotent, never raises; safe to call from any task
        of the server's trio run (e.g. a signal handler task).
        """
        self._stop_requested.set()

    async def wait_stopped(self) -> None:
        """Wait until :func:`serve` has closed every listener and connection.

        Cancellation:
          Cancelling the wait does not affect the server.
        """
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Shut down gracefully and wait until :func:`serve` has finished.

        The listeners close at once, so new clients are refused.  Connections
        waiting for input are stopped; one echoing a message finishes it.  Each
        then echoes any byte already read, half-closes and closes cleanly.
        Connections still open after ``grace`` seconds are cancelled.  Calling
        it again, or after the server has stopped, just waits.

        Cancellation:
          Cancelling the caller's wait does not undo the shutdown: once
          called, the server stops regardless.  Never raises otherwise.
        """
        self._stop_requested.set()
        await self._stopped.wait()

    async def _run(self, task_status: trio.TaskStatus[EchoServer]) -> None:
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as acceptors:
                    for listener in self.listeners:
                        acceptors.start_soon(self._accept_loop, listener, handlers)
                    for host, port in self.addresses:
                        LOGGER.info(
                            "listening on %s",
                            format_peer((host, port)),
                            extra=event(
                                "start", host=host, port=port, tls=self.config.tls is not None
                            ),
                        )
                    if self._faults_on:
                        faults = describe(self.config.connection.faults, seed=self._fault_seed)
                        LOGGER.info("faults on: %s", faults, extra=event("faults", faults=faults))
                    task_status.started(self)
                    await self._stop_requested.wait()
                    acceptors.cancel_scope.cancel()
                await self._close_listeners()
                self._begin_graceful_stop(handlers)
        finally:
            with trio.CancelScope(shield=True):
                await self._close_listeners()
            self._stopped.set()

    def _begin_graceful_stop(self, handlers: trio.Nursery) -> None:
        grace = self.config.listener.grace
        LOGGER.info(
            "shutting down: %d connection(s) open, %s s grace",
            len(self._active) + len(self._handshaking),
            grace,
            extra=event(
                "stopping", active=len(self._active) + len(self._handshaking), grace=grace
            ),
        )
        self._stopping = True
        handlers.cancel_scope.deadline = trio.current_time() + grace
        for conn in list(self._active):
            conn.stop()

    async def _close_listeners(self) -> None:
        for listener in self.listeners:
            await trio.aclose_forcefully(listener)

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        """Accept clients while a connection slot is free.

        A slot is taken *before* ``accept()``, so beyond max_connections the
        clients wait in the kernel's listen backlog, never accepted only to be
        dropped (trio issues #636, #982).
        """
        slots = self._slots
        while True:
            if slots.value == 0:
                self._tally.limit_waits += 1
                self._warn(
                    "connection limit reached (%d); new clients wait in the backlog",
                    self.config.listener.max_connections,
                )
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._tally.accept_errors += 1
                self._warn(
                    "accept failed: %s; retrying in %s s",
                    os.strerror(exc.errno),
                    ACCEPT_RETRY_DELAY,
                )
                await trio.sleep(ACCEPT_RETRY_DELAY)
            except BaseException:
                slots.release()
                raise
            else:
                if self.config.listener.proxy_protocol:
                    handlers.start_soon(self._start_proxied_connection, stream, handlers)
                else:
                    self._start_connection(stream, handlers)

    def _start_connection(self, stream: trio.SocketStream, handlers: trio.Nursery) -> None:
        # The connection's own serve() is the task's root coroutine: no wrapper
        # frame per connection; the bookkeeping runs in _connection_closed.
        try:
            conn = self._connection_for(stream)
        except OSError as exc:
            # The client is already gone (or the descriptor unusable): nothing to serve.
            LOGGER.debug("dropping a connection that failed on setup: %s", exc)
            stream.socket.close()
            self._tally.accept_errors += 1
            self._slots.release()
            return
        self._tally.accepted += 1
        self._serve_connection(conn, handlers)

    def _serve_connection(self, conn: Connection, handlers: trio.Nursery) -> None:
        self._active.add(conn)
        if self._stopping:
            conn.stop()
        # Named after the peer, whose string exists anyway: trio would otherwise
        # format a fresh name for every task.
        handlers.start_soon(conn.serve, name=conn.peer)

    async def _start_proxied_connection(
        self, stream: trio.SocketStream, handlers: trio.Nursery
    ) -> None:
        """The PROXY step, then the connection as a task of its own (this one ends).

        A connection without a valid header is closed here with reason
        ``proxy-error`` and never reaches the echo loop.
        """
        started = trio.current_time()
        self._tally.accepted += 1
        peer = _peer_of(stream)
        handshake = _Handshake()
        self._handshaking.add(handshake)
        try:
            peer, initial = await self._read_proxy_header(stream, peer)
        except ProxyProtocolError as exc:
            LOGGER.info("%s: bad PROXY header: %s", peer, exc)
            await self._refuse(stream, peer, PROXY_ERROR, started)
            return
        except (trio.BrokenResourceError, OSError) as exc:
            LOGGER.debug("%s: %s", peer, exc or type(exc).__name__)
            await self._refuse(stream, peer, RESET, started)
            return
        except trio.Cancelled:
            # Shutdown's grace ran out (or serve() was cancelled) mid-header.
            await self._refuse(stream, peer, SHUTDOWN if self._stopping else CANCELLED, started)
            raise
        finally:
            self._handshaking.discard(handshake)
        try:
            conn = self._connection_for(stream, peer=peer, initial=initial)
        except OSError as exc:
            LOGGER.debug("%s: %s", peer, exc)
            await self._refuse(stream, peer, RESET, started)
            return
        conn.started = started
        self._serve_connection(conn, handlers)

    async def _read_proxy_header(self, stream: trio.SocketStream, peer: str) -> tuple[str, bytes]:
        """Read the PROXY header; return the peer it names and the bytes after it.

        Reads at most :data:`~trio_echo._proxy.MAX_HEADER` bytes for at most
        ``proxy_timeout`` seconds.  The peer stays *peer* when the header names no
        TCP client (a balancer's health check).

        Raises:
          ProxyProtocolError: the header is malformed, too long, late or cut short.
          trio.BrokenResourceError, OSError: the connection broke meanwhile.
        """
        timeout = self.config.listener.proxy_timeout
        received = bytearray()
        header: ProxyHeader | None = None
        with trio.move_on_after(timeout):
            while (header := parse_proxy_header(received)) is None:
                chunk = await stream.receive_some(MAX_HEADER - len(received))
                if not chunk:
                    raise ProxyProtocolError("EOF before a complete PROXY header")
                received += chunk
        if header is None:
            raise ProxyProtocolError(f"no complete PROXY header within {timeout} s")
        if header.source is not None:
            LOGGER.debug(
                "%s: PROXY v%d header names the client %s",
                peer,
                header.version,
                format_peer(header.source),
            )
            peer = format_peer(header.source)
        return peer, bytes(received[header.length :])

    async def _refuse(
        self, stream: trio.SocketStream, peer: str, reason: str, started: float
    ) -> None:
        """Close a connection that ended before its echo loop, counting its reason."""
        try:
            await trio.aclose_forcefully(stream)
        finally:
            # Counted even when the close raises Cancelled (it has closed anyway).
            self._tally.record_refused(reason)
            self._slots.release()
            _log_close(peer, 0, 0, 0, started, reason)

    def _connection_closed(self, conn: Connection) -> None:
        reason = conn.reason or "error"
        self._active.discard(conn)
        self._tally.record_close(conn, reason)
        self._slots.release()
        _log_close(
            conn.peer,
            conn.rounds,
            conn.bytes_in,
            conn.bytes_out,
            conn.started,
            reason,
            faults=_fault_summary(conn),
        )

    def _connection_for(
        self, stream: trio.SocketStream, *, peer: str | None = None, initial: bytes = b""
    ) -> Connection:
        """The connection for *stream*; *initial*: what was read after a PROXY header.

        Raises:
          OSError: the socket is unusable (the client is already gone).
        """
        config: ConnectionConfig = self.config.connection
        if peer is None:
            peer = _peer_of(stream)
        tls = self.config.tls
        if self._ssl_context is not None and tls is not None:
            if self._faults_on:
                return FaultyTLSConnection(
                    stream,
                    self._ssl_context,
                    config,
                    peer=peer,
                    handshake_timeout=tls.handshake_timeout,
                    on_close=self._on_close,
                    received=initial,
                    seed=self._fault_seed,
                    events=self._tally.faults,
                )
            return TLSConnection(
                stream,
                self._ssl_context,
                config,
                peer=peer,
                handshake_timeout=tls.handshake_timeout,
                on_close=self._on_close,
                # The bytes after a PROXY header are the start of the TLS handshake.
                received=initial,
            )
        conn: Connection
        if isinstance(stream, trio.SocketStream):
            # Take the OS socket out of trio's wrapper to drive it directly.
            sock = socket.socket(fileno=stream.socket.detach())
            sock.setblocking(False)
            if self._faults_on:
                conn = FaultySocketConnection(
                    sock,
                    config,
                    peer=peer,
                    buffer=self._buffer,
                    on_close=self._on_close,
                    seed=self._fault_seed,
                    events=self._tally.faults,
                )
            else:
                conn = SocketConnection(
                    sock, config, peer=peer, buffer=self._buffer, on_close=self._on_close
                )
        elif self._faults_on:
            conn = FaultyStreamConnection(
                stream,
                config,
                peer=peer,
                on_close=self._on_close,
                seed=self._fault_seed,
                events=self._tally.faults,
            )
        else:
            conn = StreamConnection(stream, config, peer=peer, on_close=self._on_close)
        conn.initial = initial
        return conn

    def _warn(self, message: str, *args: object) -> None:
        """Log *message* unless the same kind was logged less than WARNING_INTERVAL ago.

        Each message template is limited on its own, so that hitting the
        connection limit cannot hide running out of file descriptors.
        """
        now = trio.current_time()
        if now - self._last_warning.get(message, -math.inf) >= WARNING_INTERVAL:
            self._last_warning[message] = now
            LOGGER.warning(message, *args)


@attrs.define(eq=False)
class _Handshake:
    """The counters of a connection still sending its PROXY header (all zero)."""

    rounds: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _peer_of(stream: trio.SocketStream) -> str:
    try:
        return format_peer(stream.socket.getpeername())
    except OSError:
        return "unknown peer"


def _log_close(
    peer: str,
    rounds: int,
    bytes_in: int,
    bytes_out: int,
    started: float,
    reason: str,
    *,
    faults: str | None = None,
) -> None:
    """The per-connection close line; *faults*: what was injected, if faults are on."""
    duration = trio.current_time() - started
    LOGGER.info(
        "closed %s: rounds=%d bytes_in=%d bytes_out=%d duration=%.3fs reason=%s%s",
        peer,
        rounds,
        bytes_in,
        bytes_out,
        duration,
        reason,
        "" if faults is None else f" faults={faults}",
        extra=event(
            "close",
            peer=peer,
            rounds=rounds,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration=round(duration, 6),
            reason=reason,
            **({} if faults is None else {"faults": faults}),
        ),
    )


def _fault_summary(conn: Connection) -> str | None:
    """``latency:3,fragment:120`` for a connection with faults, else ``None``."""
    if not isinstance(conn, FaultInjector):
        return None
    events = ",".join(f"{name}:{count}" for name, count in sorted(conn.fault_events.items()))
    return events or "none"


async def serve(
    config: ServerConfig,
    *,
    listeners: Sequence[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[EchoServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an echo server until it is shut down or cancelled.

    With ``config.tls`` set, loads the certificate first and serves echo
    over TLS (see :class:`TLSConfig`).  Binds ``config.listener.host``/``port``
    (``port=0`` picks a free port; ``host=None`` binds every address,
    possibly on different ports for IPv4 and IPv6 -- see
    :attr:`EchoServer.addresses`), logs ``listening on HOST:PORT`` for each,
    and runs one task per connection.

    With *listeners*, serves on those instead of binding, and ignores
    ``host``, ``port`` and ``backlog``: this is how a socket bound with
    ``SO_REUSEPORT`` or inherited from systemd is served.  Wrap a listening
    stdlib socket as ``trio.SocketListener(trio.socket.from_stdlib_socket(sock))``.
    :func:`serve` owns them from then on and closes them when it stops.

    Usage::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_echo.serve, config)
            ...  # connect to ("127.0.0.1", server.port)
            await server.shutdown()

    Returns:
      After :meth:`EchoServer.shutdown` has closed every connection.

    Cancellation:
      Cancelling the scope running :func:`serve` closes the listeners and every
      connection at once (close reason ``cancelled``); no task outlives it.

    Error handling:
      An empty *listeners* raises :exc:`ValueError`.  Binding errors (address
      in use, permission denied, unknown host) raise :exc:`OSError` before the
      server starts, and so do TLS files that are missing or invalid
      (:exc:`ssl.SSLError` is an ``OSError``).  A
      connection's errors end only that connection, with a close reason (a
      TLS handshake that fails or does not finish within
      ``tls.handshake_timeout``: ``tls-error``).  ``accept()`` running out of file
      descriptors or memory is logged and retried after 100 ms.
    """
    if listeners is not None and not listeners:
        raise ValueError("listeners must hold at least one trio.SocketListener")
    context = None if config.tls is None else server_context(config.tls)
    if listeners is None:
        listener_config = config.listener
        listeners = await trio.open_tcp_listeners(
            listener_config.port, host=listener_config.host, backlog=listener_config.backlog
        )
    await EchoServer(config, list(listeners), ssl_context=context)._run(task_status)
