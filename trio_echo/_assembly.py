"""Builds each accepted client's connection by composition: base transport, TLS, faults, steps.

The server calls one :class:`ConnectionFactory` per accepted stream; nothing
else knows which wrappers a connection has.  Adding a transport or a concern
means one more wrapper here, not a class per combination.
"""

from __future__ import annotations

import ipaddress
import math
import random
import socket
import ssl
from collections import Counter
from collections.abc import Callable

import attrs
import trio

from ._admission import AddressLimits, PerAddressStep, Refuse, Warnings
from ._config import ConnectionConfig, Faults, ServerConfig
from ._connection import Connection
from ._faults import FaultTransport, chosen, in_networks
from ._hello import HelloStep, render_hello
from ._preamble import ProxyHeaderStep
from ._reasons import PROXY_UNTRUSTED
from ._sockets import format_address, host_of, is_trusted
from ._streams import SocketTransport
from ._tls import TLSHandshake, TLSTransport
from ._transports import Step, Transport

__all__ = ["ConnectionFactory", "Shared", "peer_of"]


@attrs.frozen(kw_only=True)
class Shared:
    """What the connections of one server share: one slot per connection, not one each.

    Make it with :meth:`of`, inside the trio run the connections run in.
    """

    config: ConnectionConfig
    #: ``config.idle_timeout``, read on every wait.
    idle: float | None
    clock: trio.abc.Clock
    #: Called with the connection once it has closed (its ``reason`` set).
    on_close: Callable[[Connection], None] | None

    @classmethod
    def of(
        cls, config: ConnectionConfig, on_close: Callable[[Connection], None] | None = None
    ) -> Shared:
        return cls(
            config=config,
            idle=config.idle_timeout,
            clock=trio.lowlevel.current_clock(),
            on_close=on_close,
        )


class ConnectionFactory:
    """Makes the :class:`~trio_echo._connection.Connection` for each accepted stream.

    Holds what a server's connections share: the receive buffer of every
    plain socket, the SSL context, the fault seed and fault counters, and the
    connection config, clock and close callback (:class:`Shared`).  Make it
    inside the trio run that serves the connections.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        ssl_context: ssl.SSLContext | None,
        fault_events: Counter[str],
        on_close: Callable[[Connection], None],
    ) -> None:
        self._config = config
        self._ssl_context = ssl_context
        self._fault_events = fault_events
        self._on_close = on_close
        self._shared = Shared.of(config.connection, on_close)
        # One receive buffer for every plain-TCP connection (see SocketTransport).
        self._buffer = memoryview(bytearray(config.connection.max_message))
        faults = config.connection.faults
        #: The faults new connections get, ``None`` when off (see set_faults).
        self.faults: Faults | None = faults if faults.enabled else None
        #: ``faults is not None``, read once per accepted connection.
        self.faults_on = self.faults is not None
        #: Whether faults were ever on: the close line then shows them.
        self.faults_ever = self.faults_on
        # Connections opened since the faults were set (target_connection, toxicity).
        self._fault_number = 0
        #: Drawn once per server, and logged, so that a run without a seed can
        #: be replayed with --seed.
        self.fault_seed = faults.seed
        if self.fault_seed is None and faults.random:
            self.fault_seed = random.SystemRandom().randrange(2**32)
        # --hello: the greeting for each local port, rendered once.
        self._greetings: dict[int, bytes] = {}
        # Admission (--proxy-trusted, per-address limits).
        listener = config.listener
        self._trusted = None
        if listener.proxy_trusted is not None:
            self._trusted = [ipaddress.ip_network(c, strict=False) for c in listener.proxy_trusted]
        self._refusals = Warnings()
        self._limits = None
        if listener.max_connections_per_ip or listener.connection_rate_per_ip:
            self._limits = AddressLimits(
                max_open=listener.max_connections_per_ip, rate=listener.connection_rate_per_ip
            )

    def replace_ssl_context(self, context: ssl.SSLContext) -> None:
        """Serve new connections with *context* (open ones keep theirs)."""
        self._ssl_context = context

    def set_faults(self, faults: Faults | None) -> None:
        """Give connections opened from now on *faults* (``None``, or all off: none).

        The connection count that ``target_connection`` and ``toxicity`` use
        starts again at 0; a seed in *faults* replaces the server's.
        """
        if faults is not None and not faults.enabled:
            faults = None
        self.faults = faults
        self.faults_on = faults is not None
        self.faults_ever = self.faults_ever or self.faults_on
        self._fault_number = 0
        if faults is not None:
            if faults.seed is not None:
                self.fault_seed = faults.seed
            elif self.fault_seed is None and faults.random:
                self.fault_seed = random.SystemRandom().randrange(2**32)

    def refault(self, conn: Connection) -> None:
        """Switch the open *conn* to the current faults from its next operation
        (it counts as the next connection for targeting)."""
        faults = self._targeted(conn.peer)
        transport = conn.transport
        if isinstance(transport, FaultTransport):
            transport.switch(faults)
        elif faults is not None:
            conn.adopt(self._wrap(transport, faults))

    def _targeted(self, peer: str | None) -> Faults | None:
        """The faults for the next connection, ``None`` if it is spared
        (*peer* ``None``: the address is checked later, in the start step)."""
        faults = self.faults
        if faults is None:
            return None
        self._fault_number += 1
        if not chosen(faults, number=self._fault_number, seed=self.fault_seed):
            return None
        cidrs = faults.target_cidr
        if peer is not None and cidrs is not None and not in_networks(peer, cidrs):
            return None
        return faults

    def _wrap(self, transport: Transport, faults: Faults) -> FaultTransport:
        return FaultTransport(transport, faults, seed=self.fault_seed, events=self._fault_events)

    def __call__(self, stream: trio.SocketStream) -> Connection:
        """The connection for *stream*, which it takes over.

        Raises:
          OSError: the socket is unusable (the client is already gone).
        """
        config = self._config
        peer = peer_of(stream)
        # Take the OS socket out of trio's wrapper to drive it directly.
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(False)
        base = SocketTransport(sock, buffer=self._buffer)
        transport: Transport = base
        steps: list[Step] = []
        shared = self._shared
        if config.listener.proxy_protocol:
            if self._trusted is not None and not is_trusted(host_of(peer), self._trusted):
                refuse = Refuse(PROXY_UNTRUSTED, self._refusals, "not a trusted PROXY source")
                return Connection(base, shared, peer=peer, steps=(refuse,))
            steps.append(ProxyHeaderStep(base, config.listener.proxy_timeout))
        if self._limits is not None:
            admission = PerAddressStep(self._limits, self._on_close)
            steps.append(admission)
            # Its own close callback (the address's count goes down first): a
            # Shared of its own, paid only with per-address limits on.
            shared = attrs.evolve(shared, on_close=admission.closed)
        if self._ssl_context is not None and config.tls is not None:
            tls = TLSTransport(
                transport, self._ssl_context, max_bytes=config.connection.max_message
            )
            steps.append(TLSHandshake(tls, config.tls.handshake_timeout))
            transport = tls
        if config.connection.hello is not None:
            steps.append(self._hello_step(transport, sock))
        if self.faults_on:
            faults = self._targeted(None)
            if faults is not None:
                faulty = self._wrap(transport, faults)
                steps.append(faulty.start)
                transport = faulty
        if not steps:
            # The plain path: no list kept per connection.
            return Connection(transport, shared, peer=peer)
        return Connection(transport, shared, peer=peer, steps=tuple(steps))

    def _hello_step(self, transport: Transport, sock: socket.socket) -> HelloStep:
        """The greeting step, sent below the faults (a greeting is not an echo)."""
        config = self._config
        assert config.connection.hello is not None
        # A Unix socket has no port: {port} is 0 there (issue 15).
        port = 0 if sock.family == socket.AF_UNIX else int(sock.getsockname()[1])
        greeting = self._greetings.get(port)
        if greeting is None:
            greeting = render_hello(config.connection.hello, port=port, worker=config.worker)
            self._greetings[port] = greeting
        idle = config.connection.idle_timeout
        return HelloStep(transport, greeting, math.inf if idle is None else idle)


def peer_of(stream: trio.SocketStream) -> str:
    """The client's ``host:port`` (``unix:PATH`` over a Unix socket, whose
    clients have no name), or ``unknown peer`` if it is already gone."""
    try:
        if stream.socket.family == socket.AF_UNIX:
            return f"unix:{stream.socket.getsockname()}"
        return format_address(stream.socket.getpeername())
    except OSError:
        return "unknown peer"
