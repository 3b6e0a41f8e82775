"""What a bench run does: :class:`BenchConfig`, frozen and validated once."""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs
from attrs import validators as v

from .address import TCPAddress, UnixAddress

__all__ = ["DEFAULT_DURATION", "BenchConfig"]

#: How long a run lasts when neither a duration nor a count is given (wrk's default).
DEFAULT_DURATION: Final = 10.0
#: The largest message: a ring of two must fit in memory comfortably.
MAX_SIZE: Final = 64 << 20


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
        validator=v.instance_of((TCPAddress, UnixAddress))
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
    connect_only: bool = attrs.field(default=False, validator=v.instance_of(bool))
    """Measure connection set-up only: connect (and handshake), close, again."""
    size: int = attrs.field(default=64, validator=[_at_least_one, v.le(MAX_SIZE)])
    """Bytes per message."""
    duration: float | None = attrs.field(default=None, validator=_positive)
    """Seconds measured after the warm-up (``None``: until ``count``, else 10 s)."""
    warmup: float = attrs.field(default=0.0, validator=[v.instance_of((int, float)), v.ge(0)])
    """Seconds at the start whose round trips are verified but not measured."""
    timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a connect, or an echo outstanding, may take before it counts as an error."""
    tls: bool = attrs.field(default=False, validator=v.instance_of(bool))
    """Speak TLS (certificate verified against the system's CAs or ``cafile``)."""
    cafile: str | None = attrs.field(default=None, validator=v.optional(v.instance_of(str)))
    """PEM file of the CAs to trust instead of the system's."""
    insecure: bool = attrs.field(default=False, validator=v.instance_of(bool))
    """Accept any certificate (no verification at all)."""
    send_proxy: Literal["v1", "v2"] | None = attrs.field(default=None)
    """Start each connection with a PROXY protocol header of this version."""

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

    @insecure.validator
    def _insecure(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if value and not self.tls:
            raise ValueError("insecure needs tls")
