"""What a bench run does: :class:`BenchConfig`, frozen and validated once."""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs
from attrs import validators as v

from .._validators import instance_of
from .address import TCPAddress, UnixAddress

__all__ = ["DEFAULT_DURATION", "UDP_HEADER_SIZE", "UDP_MAX_SIZE", "BenchConfig"]

#: How long a run lasts when neither a duration nor a count is given (wrk's default).
DEFAULT_DURATION: Final = 10.0
_BOOL = instance_of(bool, what="a bool")

#: The largest message: a ring of two must fit in memory comfortably.
MAX_SIZE: Final = 64 << 20
#: A UDP datagram's flow and sequence numbers, before the pattern.
UDP_HEADER_SIZE: Final = 12
#: The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
UDP_MAX_SIZE: Final = 65507


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0; got {value!r}")


def _at_least_one(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{attribute.name} must be a whole number >= 1; got {value!r}")


@attrs.frozen(kw_only=True)
class BenchConfig:
    """One run of the measuring client.  Every error names the field first.

    Modes: closed loop (the default: each connection keeps ``pipeline``
    messages in flight and sends the next when an echo is whole); open loop
    (``rate`` set: messages at fixed intended times, latency counted from
    them); ping (``interval`` set: one connection, one message per interval);
    connect rate (``connect_only``: connect, close, again).
    """

    address: TCPAddress | UnixAddress = attrs.field(
        validator=instance_of(TCPAddress, UnixAddress, what="an address from parse_address()")
    )
    """The echo server."""
    connections: int = attrs.field(default=1, validator=_at_least_one)
    """Connections open at once (with ``connect_only``: connecting at once)."""
    pipeline: int = attrs.field(default=1, validator=_at_least_one)
    """Closed loop: messages in flight per connection."""
    rate: float | None = attrs.field(default=None, validator=_positive)
    """Open loop: messages per second over all connections."""
    count: int | None = attrs.field(default=None, validator=_at_least_one)
    """Stop after this many measured round trips (connections with ``connect_only``)."""
    interval: float | None = attrs.field(default=None, validator=_positive)
    """Ping: seconds between one message's send and the next."""
    connect_only: bool = attrs.field(default=False, validator=_BOOL)
    """Measure connection set-up only: connect (and handshake), close, again."""
    size: int = attrs.field(default=64, validator=[_at_least_one, v.le(MAX_SIZE)])
    """Bytes per message."""
    duration: float | None = attrs.field(default=None, validator=_positive)
    """Seconds measured after the warm-up (``None``: until ``count``, else 10 s)."""
    warmup: float = attrs.field(
        default=0.0, validator=[instance_of(int, float, what="seconds"), v.ge(0)]
    )
    """Seconds at the start whose round trips are verified but not measured."""
    timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a connect, or an echo outstanding, may take before it counts as an error."""
    tls: bool = attrs.field(default=False, validator=_BOOL)
    """Speak TLS (certificate verified against the system's CAs or ``cafile``)."""
    cafile: str | None = attrs.field(
        default=None, validator=v.optional(instance_of(str, what="a path"))
    )
    """PEM file of the CAs to trust instead of the system's."""
    insecure: bool = attrs.field(default=False, validator=_BOOL)
    """Accept any certificate (no verification at all)."""
    send_proxy: Literal["v1", "v2"] | None = attrs.field(default=None)
    """Start each connection with a PROXY protocol header of this version."""
    udp: bool = attrs.field(default=False, validator=_BOOL)
    """Measure UDP echo (RFC 862): each connection is a UDP socket, a flow of
    datagrams of ``size`` bytes (at least 12, at most 65,507); a datagram
    without an echo within ``timeout`` is lost, not an error."""

    @property
    def stop_after(self) -> float | None:
        """Seconds measured: ``duration``, else 10 s unless ``count`` is set."""
        if self.duration is None and self.count is None:
            return DEFAULT_DURATION
        return self.duration

    @send_proxy.validator
    def _send_proxy(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value not in (None, "v1", "v2"):
            raise ValueError(f"send_proxy must be 'v1' or 'v2'; got {value!r}")

    @pipeline.validator
    def _pipeline(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value > 1 and (self.rate is not None or self.interval is not None):
            raise ValueError("pipeline applies to the closed loop only, not with rate or interval")
        if value > 1 and self.connect_only:
            raise ValueError("pipeline does not apply with connect_only")

    @rate.validator
    def _rate(self, attribute: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and (self.interval is not None or self.connect_only):
            raise ValueError("rate cannot be combined with interval or connect_only")

    @interval.validator
    def _interval(self, attribute: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and self.connections != 1:
            raise ValueError("interval (ping) uses one connection; leave connections at 1")
        if value is not None and self.connect_only:
            raise ValueError("interval cannot be combined with connect_only")

    @cafile.validator
    def _cafile(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and not self.tls:
            raise ValueError("cafile needs tls")
        if value is not None and self.insecure:
            raise ValueError("cafile and insecure contradict each other: verify, or do not")

    @udp.validator
    def _udp(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if not value:
            return
        if isinstance(self.address, UnixAddress):
            raise ValueError("udp needs HOST:PORT, not a Unix socket")
        for name in ("tls", "send_proxy", "connect_only"):
            if getattr(self, name):
                raise ValueError(f"{name} does not apply with udp")
        if not UDP_HEADER_SIZE <= self.size <= UDP_MAX_SIZE:
            raise ValueError(
                f"size must be {UDP_HEADER_SIZE} to {UDP_MAX_SIZE} bytes with udp "
                f"(a datagram starts with a {UDP_HEADER_SIZE}-byte header); got {self.size}"
            )

    @insecure.validator
    def _insecure(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if value and not self.tls:
            raise ValueError("insecure needs tls")
