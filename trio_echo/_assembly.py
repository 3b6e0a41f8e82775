"""Builds each accepted client's connection by composition: base transport, TLS, faults, steps.

The server calls one :class:`ConnectionFactory` per accepted stream; nothing
else knows which wrappers a connection has.  Adding a transport or a concern
means one more wrapper here, not a class per combination.
"""

from __future__ import annotations

import random
import socket
import ssl
from collections import Counter
from collections.abc import Callable

import attrs
import trio

from ._config import ConnectionConfig, ServerConfig
from ._connection import Connection
from ._faults import FaultTransport
from ._preamble import ProxyHeaderStep
from ._sockets import format_address
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
        self._shared = Shared.of(config.connection, on_close)
        # One receive buffer for every plain-TCP connection (see SocketTransport).
        self._buffer = memoryview(bytearray(config.connection.max_message))
        faults = config.connection.faults
        self.faults_on = faults.enabled
        #: Drawn once per server, and logged, so that a run without a seed can
        #: be replayed with --seed.
        self.fault_seed = faults.seed
        if self.fault_seed is None and faults.jitter:
            self.fault_seed = random.SystemRandom().randrange(2**32)

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
        if config.listener.proxy_protocol:
            steps.append(ProxyHeaderStep(base, config.listener.proxy_timeout))
        if self._ssl_context is not None and config.tls is not None:
            tls = TLSTransport(
                transport, self._ssl_context, max_bytes=config.connection.max_message
            )
            steps.append(TLSHandshake(tls, config.tls.handshake_timeout))
            transport = tls
        if self.faults_on:
            faulty = FaultTransport(
                transport,
                config.connection.faults,
                seed=self.fault_seed,
                events=self._fault_events,
            )
            steps.append(faulty.start)
            transport = faulty
        if not steps:
            # The plain path: no list kept per connection.
            return Connection(transport, self._shared, peer=peer)
        return Connection(transport, self._shared, peer=peer, steps=tuple(steps))


def peer_of(stream: trio.SocketStream) -> str:
    """The client's ``host:port``, or ``unknown peer`` if it is already gone."""
    try:
        return format_address(stream.socket.getpeername())
    except OSError:
        return "unknown peer"
