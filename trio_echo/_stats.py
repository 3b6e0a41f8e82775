"""Server statistics: a tally the server owns, and frozen snapshots of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

import attrs

__all__ = ["ServerStatistics", "UDPStatistics"]


class ConnectionCounters(Protocol):
    """What the tally reads from a connection (open or closed)."""

    rounds: int
    bytes_in: int
    bytes_out: int


@attrs.frozen(kw_only=True)
class UDPStatistics:
    """The UDP counters of a server (``ServerStatistics.udp``); frozen plain data.

    ``received == echoed-or-queued + dropped`` when no fault is on (loss and
    duplication make echoes differ from admitted datagrams; see ``faults``).
    """

    received: int
    """Datagrams received."""

    echoed: int
    """Echoes sent (one per datagram admitted; a duplicated one counts twice)."""

    bytes_in: int
    """Bytes in the datagrams admitted for echoing."""

    bytes_out: int
    """Bytes echoed."""

    dropped: int
    """Datagrams not answered, in total."""

    dropped_by_reason: Mapping[str, int]
    """Datagrams not answered, per reason: ``dropped_port`` (a blocked source
    port: 0, 7, 13, 17, 19, 37), ``dropped_size`` (larger than ``max_message``),
    ``dropped_rate_source`` and ``dropped_rate_global`` (over a rate limit),
    ``dropped_backlog`` (too many echoes already delayed by faults),
    ``dropped_send_error`` (the send failed)."""

    sources: int
    """Source addresses whose rate buckets are remembered now (at most ``max_sources``)."""

    delayed: int = 0
    """Echoes waiting for an injected delay now."""


@attrs.frozen(kw_only=True)
class ServerStatistics:
    """A snapshot of a server's counters, from :meth:`EchoServer.statistics`.

    Counters cover the server's whole life so far; the open connections'
    rounds and bytes are included up to the moment of the snapshot.  Frozen
    (assigning raises :exc:`attrs.exceptions.FrozenInstanceError`), compared
    by value, and never changes after it is taken; take another for newer
    figures.  Plain data: no I/O, nothing to cancel.
    """

    active: int
    """Connections open now."""

    accepted: int
    """Connections accepted in total (``accepted == closed + active``)."""

    closed: int
    """Connections closed in total."""

    closed_by_reason: Mapping[str, int]
    """Closed connections per close reason (``rounds``, ``eof``, ``idle``, ...)."""

    rounds: int
    """Messages echoed in full."""

    bytes_in: int
    """Bytes received from clients and echoed or buffered (not bytes discarded
    after the last round)."""

    bytes_out: int
    """Bytes echoed to clients."""

    limit_waits: int
    """Times the accept loop found every connection slot taken and waited."""

    accept_errors: int
    """Times ``accept()`` failed for lack of resources (``EMFILE``, ``ENFILE``, ...)."""

    faults: Mapping[str, int] = attrs.field(factory=dict)
    """Times each injected fault acted (see :class:`~trio_echo.Faults`):
    ``latency`` echoes delayed, ``fragment`` pieces written, ``bandwidth`` waits
    to keep to the rate, ``stall`` and ``reset`` connections halted,
    ``slow_close`` closes delayed, ``timeout`` connections that stopped
    answering, ``limit_data`` connections closed at the limit,
    ``read_bandwidth`` waits before a read; for UDP, ``loss``, ``duplicate``
    and ``reorder`` datagrams.  Empty when no fault acted."""

    udp: UDPStatistics | None = None
    """The UDP counters; ``None`` when the server serves no UDP."""


@attrs.define(kw_only=True)
class Tally:
    """The counters of closed connections and of accept-side events.

    Owned by one server; the open connections are counted by the server and
    passed to :meth:`snapshot`, so the hot path only bumps per-connection fields.
    """

    accepted: int = 0
    rounds: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    limit_waits: int = 0
    accept_errors: int = 0
    closed_by_reason: Counter[str] = attrs.field(factory=Counter)
    #: Bumped live by the connections with faults (see _faults.FaultTransport).
    faults: Counter[str] = attrs.field(factory=Counter)

    def record_close(self, conn: ConnectionCounters, reason: str) -> None:
        self.rounds += conn.rounds
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.bytes_out
        self.closed_by_reason[reason] += 1

    def snapshot(
        self, active: Iterable[ConnectionCounters], udp: UDPStatistics | None = None
    ) -> ServerStatistics:
        rounds, bytes_in, bytes_out, n_active = self.rounds, self.bytes_in, self.bytes_out, 0
        for conn in active:
            n_active += 1
            rounds += conn.rounds
            bytes_in += conn.bytes_in
            bytes_out += conn.bytes_out
        return ServerStatistics(
            active=n_active,
            accepted=self.accepted,
            closed=sum(self.closed_by_reason.values()),
            closed_by_reason=dict(sorted(self.closed_by_reason.items())),
            rounds=rounds,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            limit_waits=self.limit_waits,
            accept_errors=self.accept_errors,
            faults=dict(sorted(self.faults.items())),
            udp=udp,
        )
