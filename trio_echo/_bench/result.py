"""What a bench run measured: :class:`BenchResult`, frozen, and its JSON form."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from .histogram import Histogram

__all__ = ["BenchResult", "DatagramCounts", "LatencySummary"]


@attrs.frozen(kw_only=True)
class LatencySummary:
    """Percentiles of a latency distribution, in microseconds (all 0.0 when empty)."""

    min: float
    p50: float
    p90: float
    p99: float
    p999: float
    """The 99.9th percentile."""
    max: float

    @classmethod
    def of(cls, histogram: Histogram) -> LatencySummary:
        """The summary of *histogram* (whose values are nanoseconds)."""

        def us(percent: float) -> float:
            return round(histogram.percentile(percent) / 1000, 3)

        return cls(min=us(0), p50=us(50), p90=us(90), p99=us(99), p999=us(99.9), max=us(100))


@attrs.frozen(kw_only=True)
class DatagramCounts:
    """What a UDP run adds: its datagrams, over every flow, sent within the
    measured part of the run (an echo is a round trip of :class:`BenchResult`)."""

    sent: int
    lost: int
    """No echo within ``timeout`` (late ones included)."""
    late: int
    """Of the lost, those whose echo came after the timeout after all."""
    duplicates: int
    """Echoes of a datagram already echoed."""
    reordered: int
    """Echoes that came after the echo of a datagram sent later."""


def _frozen_counts(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class BenchResult:
    """The figures of one run.  Everything but ``connect`` covers the measured
    part of the run only: the messages sent (open loop: due) after the warm-up
    and before the end of ``duration``, their echoes counted even when they
    come back after it."""

    address: str
    """The server, as given."""
    mode: str
    """``closed``, ``open``, ``ping`` or ``connect``."""
    connections: int
    """Connections asked for (UDP: flows, one socket each)."""
    size: int
    """Bytes per message (UDP: per datagram)."""
    seconds: float
    """Length of the measured part of the run."""
    round_trips: int
    """Messages whose echo came back whole and verified within the measured part."""
    connects: int
    """Connections established (all of them, warm-up included)."""
    bytes: int
    """Echoed bytes verified within the measured part."""
    latency: LatencySummary
    """Round-trip latency (open loop: from each message's intended send time)."""
    connect: LatencySummary
    """Connect latency (TCP connect, plus the TLS handshake with TLS; UDP:
    the ``connect()`` call, which only sets the peer)."""
    errors: Mapping[str, int] = attrs.field(converter=_frozen_counts)
    """Connections (UDP: flows) that failed, by kind: ``connect``, ``closed``
    (the server closed with echoes outstanding), ``reset``, ``timeout``,
    ``tls``, ``refused`` (UDP: an ICMP error after echoes came), ``mismatch``
    (a wrong, missing or extra byte)."""
    failure: str | None = None
    """The first failure in one line (a mismatch names connection, offset and bytes)."""
    histogram: Histogram = attrs.field(eq=False, repr=False)
    """Every measured round trip, in nanoseconds."""
    connect_histogram: Histogram = attrs.field(eq=False, repr=False)
    """Every connect measured, in nanoseconds."""
    udp: DatagramCounts | None = None
    """The datagram counts of a UDP run (``None`` for a stream)."""

    @property
    def rate(self) -> float:
        """Round trips per second (with ``connect_only``: connections per second)."""
        done = self.connects if self.mode == "connect" else self.round_trips
        return done / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Every byte verified, no error, and something completed."""
        done = self.connects if self.mode == "connect" else self.round_trips
        return done > 0 and not self.errors

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object (keys fixed by the issue, plus a few more)."""
        return {
            "address": self.address,
            "mode": self.mode,
            "connections": self.connections,
            "size": self.size,
            "seconds": round(self.seconds, 6),
            "round_trips": self.round_trips,
            "rate": round(self.rate, 3),
            "bytes": self.bytes,
            "mib_per_s": round(self.bytes / self.seconds / (1 << 20), 3) if self.seconds else 0.0,
            "connects": self.connects,
            "latency_us": attrs.asdict(self.latency),
            "connect_us": attrs.asdict(self.connect),
            "errors": dict(self.errors),
            "failure": self.failure,
            "udp": None if self.udp is None else attrs.asdict(self.udp),
        }
