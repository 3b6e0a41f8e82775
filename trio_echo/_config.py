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

__all__ = ["ConnectionConfig", "Framing", "ListenerConfig", "ServerConfig"]

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

    proxy_protocol: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Expect every connection to start with a PROXY protocol header (v1 or v2, as
    sent by HAProxy's ``send-proxy``/``send-proxy-v2``, AWS NLB and others) and
    report the client it names as the peer.  A connection without a valid header
    is closed with reason ``proxy-error``; none of its bytes are echoed."""

    proxy_timeout: float = attrs.field(default=3.0, validator=_seconds(allow_zero=False))
    """With :attr:`proxy_protocol`, how long a connection may take to send its
    complete header before it is closed with reason ``proxy-error``."""


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
