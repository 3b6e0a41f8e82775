"""Frozen, validated configuration, grouped by who reads it.

:class:`ListenerConfig` is what the accept side needs, :class:`ConnectionConfig`
is what each connection task needs, and :class:`ServerConfig` bundles the two.
They are built once -- by the CLI or by the embedding caller -- and passed down
explicitly; nothing reads configuration from anywhere else.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

__all__ = ["ConnectionConfig", "Faults", "Framing", "ListenerConfig", "ServerConfig"]

#: How a byte stream is split into messages: ``"raw"`` (one receive is one
#: message) or ``"line"`` (a message ends with ``b"\n"``).
Framing = Literal["raw", "line"]

FRAMINGS: tuple[Framing, ...] = ("raw", "line")


def _int_in_range(lo: int, hi: int | None = None) -> Any:
    """Validator: a real ``int`` (not ``bool``) with ``lo <= value <= hi``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{attribute.name} must be an int, not {type(value).__name__}: {value!r}"
            )
        if value < lo or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"{attribute.name} must be {bounds}, got {value!r}")

    return check


def _seconds(*, allow_zero: bool) -> Any:
    """Validator: a finite, non-negative number of seconds (``> 0`` unless *allow_zero*)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"{attribute.name} must be a number of seconds, "
                f"not {type(value).__name__}: {value!r}"
            )
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{attribute.name} must be a finite number {bound}, got {value!r}")

    return check


def _optional(validator: Any) -> Any:
    return attrs.validators.optional(validator)


def _jitter_within_latency(
    instance: Faults, attribute: attrs.Attribute[Any], value: float
) -> None:
    if value > instance.latency:
        raise ValueError(
            f"jitter must not exceed latency ({instance.latency!r} s), got {value!r}: "
            "a delay of latency +/- jitter would be negative"
        )


def _delay_needs_fragment(instance: Faults, attribute: attrs.Attribute[Any], value: float) -> None:
    if value and instance.fragment is None:
        raise ValueError(f"fragment_delay needs fragment (the piece size), got {value!r}")


@attrs.frozen(kw_only=True)
class Faults:
    """Misbehaviour injected on purpose, to test clients against a bad server.

    Every fault is off by default; :attr:`enabled` says whether any is on, and
    only then does a connection pay for the fault layer.  Faults act on the
    echo (the server-to-client direction), in this order: *latency* before
    each echo, then the echo is written in pieces (*fragment*, *bandwidth*),
    and the connection halts (*stall_after*, *reset_after*) once the given
    number of bytes has been echoed.

    Example::

        ConnectionConfig(faults=Faults(latency=0.05, jitter=0.01, seed=7, fragment=1))
    """

    latency: float = attrs.field(default=0.0, validator=_seconds(allow_zero=True))
    """Seconds to wait before each echo; ``0`` is off."""

    jitter: float = attrs.field(
        default=0.0, validator=[_seconds(allow_zero=True), _jitter_within_latency]
    )
    """Each delay is ``latency + uniform(-jitter, +jitter)`` seconds, drawn from a
    generator seeded with :attr:`seed`; at most :attr:`latency`, so no delay is negative."""

    fragment: int | None = attrs.field(default=None, validator=_optional(_int_in_range(1)))
    """Write each echo in pieces of at most this many bytes, one send per piece;
    ``None`` is off."""

    fragment_delay: float = attrs.field(
        default=0.0, validator=[_seconds(allow_zero=True), _delay_needs_fragment]
    )
    """Seconds to wait between the pieces of one echo (needs :attr:`fragment`)."""

    bandwidth: int | None = attrs.field(default=None, validator=_optional(_int_in_range(1)))
    """Pace the echoes of each connection to at most this many bytes per second;
    ``None`` is off."""

    stall_after: int | None = attrs.field(default=None, validator=_optional(_int_in_range(0)))
    """After echoing this many bytes, stop reading and writing and hold the
    connection open silently until the idle timeout (close reason ``stalled``);
    ``None`` is off, ``0`` stalls before the first echo."""

    reset_after: int | None = attrs.field(default=None, validator=_optional(_int_in_range(0)))
    """After echoing this many bytes, abort the connection with a TCP reset,
    mid-message if that is where the count falls (close reason
    ``reset-injected``); ``None`` is off, ``0`` resets before the first echo."""

    seed: int | None = attrs.field(default=None, validator=_optional(_int_in_range(0)))
    """Seed for the jitter's generator.  Each connection draws from its own
    generator seeded with it, so every connection sees the same sequence of
    delays whatever order connections arrive in.  ``None`` lets the server pick
    a seed at start and log it, so that a failing run can be replayed."""

    @property
    def enabled(self) -> bool:
        """Whether any fault is on (:attr:`seed` alone is not a fault)."""
        return bool(
            self.latency
            or self.fragment is not None
            or self.bandwidth is not None
            or self.stall_after is not None
            or self.reset_after is not None
        )


@attrs.frozen(kw_only=True)
class ConnectionConfig:
    """What each connection task needs to run the echo loop."""

    rounds: int | None = attrs.field(default=None, validator=_optional(_int_in_range(1)))
    """Echo this many messages, then half-close and close; ``None`` echoes until the
    client closes."""

    framing: Framing = attrs.field(default="raw", validator=attrs.validators.in_(FRAMINGS))
    """``"raw"``: a message is what one receive returns. ``"line"``: a message is a
    line ending in ``b"\\n"``, echoed with it."""

    max_message: int = attrs.field(default=65536, validator=_int_in_range(1))
    """The largest message in bytes: the most one receive reads in ``raw`` framing,
    and the longest line (newline included) in ``line`` framing."""

    idle_timeout: float | None = attrs.field(
        default=300.0, validator=_optional(_seconds(allow_zero=False))
    )
    """Close a connection after this many seconds without progress in either
    direction (reason ``idle``); ``None`` disables it."""

    drain_timeout: float = attrs.field(default=2.0, validator=_seconds(allow_zero=True))
    """After the server half-closes, how long it keeps reading and discarding the
    client's input while waiting for the client's EOF, so that closing does not
    make the kernel send a reset that could destroy echoes the client has not read yet."""

    faults: Faults = attrs.field(factory=Faults, validator=attrs.validators.instance_of(Faults))
    """Misbehaviour to inject on purpose (see :class:`Faults`); all off by default."""


@attrs.frozen(kw_only=True)
class ListenerConfig:
    """What the accept side of the server needs."""

    host: str | None = attrs.field(
        default="127.0.0.1", validator=_optional(attrs.validators.instance_of(str))
    )
    """The address to bind; ``None`` binds every local address (IPv4 and IPv6)."""

    port: int = attrs.field(default=9999, validator=_int_in_range(0, 65535))
    """The TCP port; ``0`` picks a free ephemeral port (see :attr:`EchoServer.port`)."""

    backlog: int | None = attrs.field(default=None, validator=_optional(_int_in_range(1)))
    """The listen backlog; ``None`` lets trio choose (the system's maximum)."""

    max_connections: int = attrs.field(default=1000, validator=_int_in_range(1))
    """At most this many connections are open at once; further clients wait in the
    listen backlog until a slot frees."""

    grace: float = attrs.field(default=5.0, validator=_seconds(allow_zero=True))
    """On graceful shutdown, how long connections may take to finish the message in
    progress before they are cancelled."""


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything :func:`trio_echo.serve` needs.

    Example::

        config = ServerConfig(
            listener=ListenerConfig(port=0),
            connection=ConnectionConfig(rounds=3, framing="line"),
        )
    """

    listener: ListenerConfig = attrs.field(
        factory=ListenerConfig, validator=attrs.validators.instance_of(ListenerConfig)
    )
    connection: ConnectionConfig = attrs.field(
        factory=ConnectionConfig, validator=attrs.validators.instance_of(ConnectionConfig)
    )
