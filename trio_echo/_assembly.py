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

import trio

from ._config import ServerConfig
from ._connection import Connection, Step
from ._faults import FaultTransport
from ._preamble import ProxyHeaderStep
from ._sockets import format_address
from ._tls import TLSHandshake, TLSTransport
from ._transports import SocketTransport, Transport

__all__ = ["ConnectionFactory", "peer_of"]


class ConnectionFactory:
    """Makes the :class:`~trio_echo._connection.Connection` for each accepted stream.

    Holds what a server's connections share: the receive buffer of every
    plain socket, the SSL context, the fault seed and fault counters, and the
    close callback.
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
        # One receive buffer for every plain-TCP connection (see SocketTransport).
        self._buffer = memoryview(bytearray(config.connection.max_message))
        faults = config.connection.faults
        self.faults_on = faults.enabled
        #: Drawn once per server, and logged, so that a run without a seed can
        #: be replayed with --seed.
        self.fault_seed = faults.seed
        if self.fault_seed is None and faults.random:
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
            return Connection(transport, config.connection, peer=peer, on_close=self._on_close)
        return Connection(
            transport, config.connection, peer=peer, steps=tuple(steps), on_close=self._on_close
        )


def peer_of(stream: trio.SocketStream) -> str:
    """The client's ``host:port`` (``unix:PATH`` over a Unix socket, whose
    clients have no name), or ``unknown peer`` if it is already gone."""
    try:
        if stream.socket.family == socket.AF_UNIX:
            return f"unix:{stream.socket.getsockname()}"
        return format_address(stream.socket.getpeername())
    except OSError:
        return "unknown peer"
