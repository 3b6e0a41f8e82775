"""The PROXY header as a step before echoing: read it, name the real client, hand back the rest.

Runs in the connection's own task (see :class:`~trio_echo._connection.Step`),
on the base transport, under TLS if TLS is on: the bytes after the header are
the client's first input, or the start of its TLS handshake.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ._protocol import Data
from ._proxy import ProxyHeader, ProxyProtocolError, parse_proxy_header
from ._reasons import PROXY_ERROR
from ._sockets import format_address
from ._transports import Ended, Owner, Transport

__all__ = ["ProxyHeaderStep"]

LOGGER = logging.getLogger("trio_echo")


class Rewindable(Transport, Protocol):
    """A base transport that can hand bytes back to its next receive."""

    def unread(self, data: bytes) -> None: ...


class ProxyHeaderStep:
    """Read the PROXY header from *transport* within *timeout* seconds.

    The connection's peer becomes the client the header names (it stays the
    balancer's address when the header names none, as in a health check);
    the bytes after the header are handed back to *transport*.  A malformed,
    too long, late or cut-short header ends the connection with reason
    ``proxy-error`` and one INFO line.  The header length limit is
    :func:`~trio_echo._proxy.parse_proxy_header`'s (``MAX_HEADER``).
    """

    def __init__(self, transport: Rewindable, timeout: float) -> None:
        self.transport = transport
        self.timeout = timeout

    async def run(self, owner: Owner) -> None:
        transport = self.transport
        received = bytearray()
        try:
            while (header := parse_proxy_header(received)) is None:
                data: Data | None = transport.try_receive()
                if data is None:
                    await transport.wait_receivable()
                    continue
                if not data:
                    raise ProxyProtocolError("EOF before a complete PROXY header")
                # Copied at once: the chunk may be a view of the shared buffer.
                received += data
        except ProxyProtocolError as exc:
            raise _refuse(owner, exc) from exc
        self._accept(owner, header)
        transport.unread(bytes(received[header.length :]))

    def timed_out(self, owner: Owner) -> Ended:
        return _refuse(owner, f"no complete PROXY header within {self.timeout} s")

    def _accept(self, owner: Owner, header: ProxyHeader) -> None:
        if header.source is not None:
            client = format_address(header.source)
            LOGGER.debug(
                "%s: PROXY v%d header names the client %s", owner.peer, header.version, client
            )
            owner.peer = client


def _refuse(owner: Owner, problem: object) -> Ended:
    LOGGER.info("%s: bad PROXY header: %s", owner.peer, problem)
    return Ended(PROXY_ERROR)
