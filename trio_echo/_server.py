"""The running server's handle: the accept loop with its connection limit, graceful shutdown.

:func:`trio_echo._serve.serve` binds the endpoints and runs an :class:`EchoServer`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
from collections.abc import Sequence
from typing import Final

import trio

from ._assembly import ConnectionFactory
from ._closelog import log_close
from ._config import Faults, ServerConfig
from ._connection import Connection
from ._endpoints import OtherEndpoints
from ._faults import describe
from ._logs import LogLimiter, event
from ._reasons import ERROR, REFUSED
from ._sockets import format_address
from ._stats import ServerStatistics, Tally
from ._tls import server_context
from ._udp import UDPEcho
from ._unix import UnixSocketFile

__all__ = ["EchoServer"]

LOGGER = logging.getLogger("trio_echo")

# Errors that accept(2) returns when the system is overloaded (as in trio's
# serve_listeners): log, wait, retry -- never crash, never spin.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)

# How long to wait after one of those before calling accept() again.
ACCEPT_RETRY_DELAY: Final = 0.100


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
        udp_sockets: Sequence[socket.socket] = (),
        unix_file: UnixSocketFile | None = None,
    ) -> None:
        self.config = config
        self.listeners: tuple[trio.SocketListener, ...] = tuple(listeners)
        # Read once: the listeners are closed at shutdown, the handle outlives them.
        names = [
            listener.socket.getsockname()
            for listener in listeners
            if listener.socket.family != socket.AF_UNIX
        ]
        self._addresses = tuple((str(name[0]), int(name[1])) for name in names)
        self._tally = Tally()
        # Every open connection, echoing or still in a step before echoing.  A
        # dict used as a set: at 10,000 entries its table takes about half the
        # memory of a set's (a set grows fourfold, a dict threefold).
        self._active: dict[Connection, None] = {}
        self._slots = trio.Semaphore(config.listener.max_connections)
        # One bound method for all connections, not one per connection.
        self._new_connection = ConnectionFactory(
            config,
            ssl_context=ssl_context,
            fault_events=self._tally.faults,
            on_close=self._connection_closed,
        )
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        self._stopping = False
        self._grace_ends = math.inf
        # Each kind of warning at most once per WARNING_INTERVAL (see _warn).
        self._warnings = LogLimiter()
        udp = None
        if config.udp is not None:
            udp = UDPEcho(
                config,
                udp_sockets,
                fault_seed=self._new_connection.fault_seed,
                fault_events=self._tally.faults,
            )
        self._others = OtherEndpoints(udp=udp, unix_file=unix_file)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every bound TCP ``(host, port)``: one per listener (IPv4 and IPv6 may
        differ); empty when no TCP is served."""
        return self._addresses

    @property
    def udp_addresses(self) -> tuple[tuple[str, int], ...]:
        """Every bound UDP ``(host, port)`` (the TCP ones, when both are served);
        empty when no UDP is served."""
        return self._others.udp_addresses

    @property
    def unix_path(self) -> str | None:
        """The path of the Unix socket served, ``None`` if none."""
        return self._others.unix_path

    @property
    def host(self) -> str:
        """The bound address of the first TCP listener (as ``addresses[0][0]``),
        else of the first UDP socket.

        Raises:
          LookupError: the server serves only a Unix socket.
        """
        return self._first_address("address")[0]

    @property
    def port(self) -> int:
        """The bound port of the first TCP listener (the real one when configured
        as ``0``), else of the first UDP socket.

        Raises:
          LookupError: the server serves only a Unix socket.
        """
        return self._first_address("port")[1]

    def _first_address(self, what: str) -> tuple[str, int]:
        """The first TCP address, else the first UDP one (*what* names the need)."""
        addresses = self.addresses or self.udp_addresses
        if not addresses:
            raise LookupError(f"this server has no TCP or UDP {what} (it serves a Unix socket)")
        return addresses[0]

    @property
    def ready(self) -> bool:
        """Whether the server accepts new clients: ``True`` once listening,
        ``False`` from the moment a shutdown is requested (``/readyz``)."""
        return not (self._stop_requested.is_set() or self._stopped.is_set())

    def reload_tls(self) -> bool:
        """Re-read the TLS certificate chain, key and client CAs from ``config.tls``'s files.

        New connections get them from now on; open connections keep the ones
        they started with, so none is dropped.  Synchronous (the files are
        small); ``SIGHUP`` calls it in the ``trio-echo`` command.

        Returns:
          ``True`` once reloaded (logged at INFO).  ``False`` when a file is
          missing or invalid -- logged at ERROR naming the file, and the
          certificate in use is kept -- or when the server has no TLS.
          Never raises.
        """
        if self.config.tls is None:
            LOGGER.warning("TLS reload requested, but this server does not serve TLS")
            return False
        try:
            context = server_context(self.config.tls)
        except OSError as exc:
            LOGGER.error(
                "TLS reload failed, keeping the certificate in use: %s",
                exc.strerror or exc,
                extra=event("tls-reload", ok=False, error=str(exc.strerror or exc)),
            )
            return False
        self._new_connection.replace_ssl_context(context)
        LOGGER.info("TLS certificate reloaded", extra=event("tls-reload", ok=True))
        return True

    # ---- faults at run time (issue 17) ----

    @property
    def faults(self) -> Faults | None:
        """The faults that connections opened now get; ``None`` when off."""
        return self._new_connection.faults

    def set_faults(self, faults: Faults | None, *, existing: bool = False) -> None:
        """Inject *faults* from now on; ``None`` (or a :class:`Faults` with
        every fault off) turns them off.

        Connections opened afterwards get them.  With *existing*, the open
        connections switch too, from their next echo (or read); one opened
        with faults off is then given the fault layer it lacked (an echo
        already being sent finishes as it was), through a marker the echo
        loop already tests once per round -- so with faults off it checks
        nothing more per round.  Counts (``stall_after``, ``limit_data``...) start from the
        switch; ``target_connection`` and ``toxicity`` count connections from
        this call on, the open ones first (in the order they were opened).

        Synchronous; call it from a task of the server's trio run (for a
        server in a thread, :meth:`ThreadedEchoServer.set_faults`).  Logged
        at INFO.

        Raises:
          TypeError: *faults* is neither a :class:`Faults` nor ``None``.
        """
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError(f"faults must be a Faults or None, not {type(faults).__name__}")
        factory = self._new_connection
        factory.set_faults(faults)
        if existing:
            for conn in list(self._active):
                factory.refault(conn)
        current = factory.faults
        text = "off" if current is None else describe(current, seed=factory.fault_seed)
        scope = "new and open connections" if existing else "new connections"
        LOGGER.info(
            "faults set for %s: %s",
            scope,
            text,
            extra=event("faults", faults=text, existing=existing),
        )

    def statistics(self) -> ServerStatistics:
        """A frozen snapshot of the server's counters, open connections included.

        Synchronous and cheap (it walks the open connections); never raises.
        """
        udp = self._others.udp_statistics()
        return self._tally.snapshot(self._active, udp)

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

    async def run(self, task_status: trio.TaskStatus[EchoServer]) -> None:
        """Serve until shut down or cancelled (what :func:`~trio_echo.serve` does
        once it has bound the endpoints); not for callers of the handle.

        Starts *task_status* with the handle once every listener accepts.
        """
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as acceptors:
                    for listener in self.listeners:
                        acceptors.start_soon(self._accept_loop, listener, handlers)
                    for host, port in self.addresses:
                        LOGGER.info(
                            "listening on %s",
                            format_address((host, port)),
                            extra=event(
                                "start", host=host, port=port, tls=self.config.tls is not None
                            ),
                        )
                    self._others.start(acceptors, handlers, tls=self.config.tls is not None)
                    udp_faults = self.config.connection.faults.datagram_enabled
                    if self._new_connection.faults_on or (
                        self._others.udp is not None and udp_faults
                    ):
                        faults = describe(
                            self.config.connection.faults, seed=self._new_connection.fault_seed
                        )
                        LOGGER.info("faults on: %s", faults, extra=event("faults", faults=faults))
                    task_status.started(self)
                    await self._stop_requested.wait()
                    acceptors.cancel_scope.cancel()
                await self._close_listeners()
                self._begin_graceful_stop(handlers)
        finally:
            with trio.CancelScope(shield=True):
                await self._close_listeners()
            self._others.close()
            self._stopped.set()

    def _begin_graceful_stop(self, handlers: trio.Nursery) -> None:
        grace = self.config.listener.grace
        LOGGER.info(
            "shutting down: %d connection(s) open, %s s grace",
            len(self._active),
            grace,
            extra=event("stopping", active=len(self._active), grace=grace),
        )
        self._stopping = True
        self._others.stop()
        # After the grace, connections are cancelled; each still closes cleanly
        # (at most drain_timeout more), see Connection.
        self._grace_ends = trio.current_time() + grace
        handlers.cancel_scope.deadline = self._grace_ends
        for conn in list(self._active):
            conn.stop(grace_ends=self._grace_ends)

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
        # With several listeners (IPv4 and IPv6, TCP and a Unix socket), a slot
        # held by one listener's idle accept() would starve the others: take
        # one only once a client is waiting on this listener.
        shared = len(self.listeners) > 1
        while True:
            if shared:
                await trio.lowlevel.wait_readable(listener.socket)
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
                self._start_connection(stream, handlers)

    def _start_connection(self, stream: trio.SocketStream, handlers: trio.Nursery) -> None:
        # The connection's own serve() is the task's root coroutine: no wrapper
        # frame per connection; the bookkeeping runs in _connection_closed.
        try:
            conn = self._new_connection(stream)
        except OSError as exc:
            # The client is already gone (or the descriptor unusable): nothing to serve.
            LOGGER.debug("dropping a connection that failed on setup: %s", exc)
            stream.socket.close()
            self._tally.accept_errors += 1
            self._slots.release()
            return
        self._tally.accepted += 1
        self._active[conn] = None
        if self._stopping:
            conn.stop(grace_ends=self._grace_ends)
        # Named after the peer, whose string exists anyway: trio would otherwise
        # format a fresh name for every task.
        handlers.start_soon(conn.serve, name=conn.peer)

    def _connection_closed(self, conn: Connection) -> None:
        reason = conn.reason or ERROR
        self._active.pop(conn, None)
        self._tally.record_close(conn, reason)
        self._slots.release()
        if reason in REFUSED:
            # Counted; warned about at most every 10 s (see _admission), not logged each.
            return
        log_close(conn, reason, faults_on=self._new_connection.faults_ever)

    def _warn(self, message: str, *args: object) -> None:
        """Log *message* unless the same kind was logged less than WARNING_INTERVAL
        ago (each message template is a kind of its own)."""
        if self._warnings.allow(message, trio.current_time()):
            LOGGER.warning(message, *args)
