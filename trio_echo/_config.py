"""Frozen, validated configuration, grouped by who reads it.

:class:`ListenerConfig` is what the accept side needs, :class:`ConnectionConfig`
is what each connection task needs, :class:`TLSConfig` is what serving over TLS
needs, and :class:`ServerConfig` bundles them.  They are built once -- by the
CLI, by the embedding caller or by the pytest plugin -- and passed down
explicitly; nothing reads configuration from anywhere else.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import attrs

from ._faultconfig import Faults
from ._validators import (
    PATH,
    PATH_TYPES,
    instance_of,
    int_in_range,
    networks,
    one_of,
    optional,
    seconds,
)

__all__ = [
    "ConnectionConfig",
    "Faults",
    "Framing",
    "ListenerConfig",
    "ServerConfig",
    "TLSConfig",
    "UDPConfig",
]

#: How a byte stream is split into messages: ``"raw"`` (one receive is one
#: message) or ``"line"`` (a message ends with ``b"\n"``).
Framing = Literal["raw", "line"]
Framing.__doc__ = """How a byte stream is split into messages (a ``Literal`` type).

``"raw"``: a message is what one receive returns.  ``"line"``: a message is a
line ending in ``b"\\n"``, echoed with it.  Any other value is rejected by
:class:`ConnectionConfig` with :exc:`ValueError`.
"""

FRAMINGS: tuple[Framing, ...] = ("raw", "line")

#: The TLS versions TLSConfig.min_version accepts.
TLSVersion = Literal["1.2", "1.3"]
TLS_VERSIONS: tuple[TLSVersion, ...] = ("1.2", "1.3")


def _hello_template(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    from ._hello import check_hello

    check_hello(value)


@attrs.frozen(kw_only=True)
class ConnectionConfig:
    """What each connection task needs to run the echo loop.

    Frozen and keyword-only; derive variants with :func:`attrs.evolve`.
    Construction does no I/O (so it has nothing to cancel).

    Raises:
      TypeError: a value of the wrong type (``bool`` is not an ``int``), or a
        positional argument.
      ValueError: a value out of range; the message names the field.
    """

    rounds: int | None = attrs.field(default=None, validator=optional(int_in_range(1)))
    """Echo this many messages, then half-close and close; ``None`` echoes until the
    client closes."""

    framing: Framing = attrs.field(default="raw", validator=one_of(FRAMINGS))
    """``"raw"``: a message is what one receive returns. ``"line"``: a message is a
    line ending in ``b"\\n"``, echoed with it."""

    max_message: int = attrs.field(default=65536, validator=int_in_range(1))
    """The largest message in bytes: the most one receive reads in ``raw`` framing,
    and the longest line (newline included) in ``line`` framing."""

    idle_timeout: float | None = attrs.field(
        default=300.0, validator=optional(seconds(allow_zero=False))
    )
    """Close a connection after this many seconds without progress in either
    direction (reason ``idle``); ``None`` disables it."""

    drain_timeout: float = attrs.field(default=2.0, validator=seconds(allow_zero=True))
    """After the server half-closes, how long it keeps reading and discarding the
    client's input while waiting for the client's EOF, so that closing does not
    make the kernel send a reset that could destroy echoes the client has not read yet."""

    faults: Faults = attrs.field(factory=Faults, validator=instance_of(Faults, what="a Faults"))
    """Misbehaviour to inject on purpose (see :class:`Faults`); all off by default."""

    # ---- operations (issue 16) ----

    hello: str | None = attrs.field(
        default=None, validator=optional([instance_of(str, what="a str"), _hello_template])
    )
    """Send this text (UTF-8) once when a connection opens, before any echo; ``None``
    (the default) keeps the echo pure.  Placeholders ``{hostname}``, ``{pid}``,
    ``{worker}`` (:attr:`ServerConfig.worker`) and ``{port}`` (the local port the client
    reached) name the answering server; ``{{`` and ``}}`` are literal braces.  Not an
    echo: it counts in neither rounds nor bytes out."""


_trusted_networks = networks(none_means="None trusts all")


def _networks(instance: ListenerConfig, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a tuple of CIDR strings, given with proxy_protocol."""
    _trusted_networks(instance, attribute, value)
    if not instance.proxy_protocol:
        raise ValueError(f"{attribute.name} applies only with proxy_protocol")


def _mode_needs_unix(
    instance: ListenerConfig, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None and instance.unix is None:
        raise ValueError(f"unix_mode needs unix (the socket's path), got {value:#o}")


@attrs.frozen(kw_only=True)
class ListenerConfig:
    """What the accept side of the server needs.

    Frozen and keyword-only, validated like :class:`ConnectionConfig`
    (:exc:`TypeError` or :exc:`ValueError` naming the field); no I/O.
    """

    host: str | None = attrs.field(
        default="127.0.0.1",
        validator=optional(instance_of(str, what="a str (None binds every address)")),
    )
    """The address to bind; ``None`` binds every local address (IPv4 and IPv6)."""

    port: int = attrs.field(default=9999, validator=int_in_range(0, 65535))
    """The TCP port; ``0`` picks a free ephemeral port (see :attr:`EchoServer.port`)."""

    backlog: int | None = attrs.field(default=None, validator=optional(int_in_range(1)))
    """The listen backlog; ``None`` lets trio choose (the system's maximum)."""

    max_connections: int = attrs.field(default=1000, validator=int_in_range(1))
    """At most this many connections are open at once; further clients wait in the
    listen backlog until a slot frees."""

    grace: float = attrs.field(default=5.0, validator=seconds(allow_zero=True))
    """On graceful shutdown, how long connections may take to finish the message in
    progress before they are cancelled."""

    proxy_protocol: bool = attrs.field(default=False, validator=instance_of(bool, what="a bool"))
    """Expect every connection to start with a PROXY protocol header (v1 or v2, as
    sent by HAProxy's ``send-proxy``/``send-proxy-v2``, AWS NLB and others) and
    report the client it names as the peer.  A connection without a valid header
    is closed with reason ``proxy-error``; none of its bytes are echoed."""

    proxy_timeout: float = attrs.field(default=3.0, validator=seconds(allow_zero=False))
    """With :attr:`proxy_protocol`, how long a connection may take to send its
    complete header before it is closed with reason ``proxy-error``."""

    # -- Transports besides TCP (issue 15) --

    tcp: bool = attrs.field(default=True, validator=instance_of(bool, what="a bool"))
    """Serve stream echo over TCP on :attr:`host`/:attr:`port`; ``False`` serves
    only the Unix socket and/or UDP (``--udp-only``, ``--unix`` alone)."""

    unix: str | os.PathLike[str] | None = attrs.field(
        default=None, validator=optional(instance_of(*PATH_TYPES, what=PATH))
    )
    """Also serve stream echo on a Unix domain socket at this path, with the same
    rounds, framing, limits, idle timeout, faults and statistics as TCP (the
    connection limit is shared).  A stale socket file is replaced; a live one
    makes :func:`~trio_echo.serve` raise :exc:`OSError` (``EADDRINUSE``).  The
    file is removed at shutdown."""

    unix_mode: int | None = attrs.field(
        default=None, validator=[optional(int_in_range(0, 0o777)), _mode_needs_unix]
    )
    """Permissions of the socket file (``0o660``); ``None`` leaves them to the umask."""

    # ---- hardening (issue 16) ----

    proxy_trusted: tuple[str, ...] | None = attrs.field(
        default=None, validator=optional(_networks)
    )
    """With :attr:`proxy_protocol`, honour a PROXY header only from these source
    networks (CIDR strings such as ``"10.0.0.0/8"``; a bare address is a /32 or
    /128); a connection from elsewhere is closed with reason ``proxy-untrusted``
    before anything is read.  ``None``: every source is trusted."""

    max_connections_per_ip: int | None = attrs.field(
        default=None, validator=optional(int_in_range(1))
    )
    """At most this many connections open at once from one client address (behind a
    PROXY balancer: the client the header names); more are closed with reason
    ``per-ip-limit``.  ``None``: no limit."""

    connection_rate_per_ip: float | None = attrs.field(
        default=None, validator=optional(seconds(allow_zero=False))
    )
    """At most this many new connections per second from one client address, with a
    burst of one second's worth (at least 1); more are closed with reason
    ``per-ip-rate``.  ``None``: no limit."""


@attrs.frozen(kw_only=True)
class TLSConfig:
    """Serve over TLS: the server's certificate chain and, optionally, client checks.

    Frozen and keyword-only; *certfile* is required.  Paths may be ``str`` or
    :class:`os.PathLike`; anything else raises :exc:`TypeError`, and a
    non-positive *handshake_timeout* :exc:`ValueError`, naming the field.
    The files are read when :func:`trio_echo.serve` starts, not here: a
    missing or unreadable file, or a key that does not match the
    certificate, raises :exc:`OSError` (:exc:`ssl.SSLError` is one) from
    ``serve`` before it binds.
    """

    certfile: str | os.PathLike[str] = attrs.field(validator=instance_of(*PATH_TYPES, what=PATH))
    """PEM file with the server's certificate chain (and its key, if *keyfile* is ``None``)."""

    keyfile: str | os.PathLike[str] | None = attrs.field(
        default=None, validator=optional(instance_of(*PATH_TYPES, what=PATH))
    )
    """PEM file with the private key; ``None`` reads it from *certfile*."""

    client_ca: str | os.PathLike[str] | None = attrs.field(
        default=None, validator=optional(instance_of(*PATH_TYPES, what=PATH))
    )
    """PEM file of CA certificates; when set, every client must present a
    certificate signed by one of them, or its handshake fails (``tls-error``)."""

    handshake_timeout: float = attrs.field(default=10.0, validator=seconds(allow_zero=False))
    """A client must complete the TLS handshake within this many seconds of being
    accepted, or it is closed with reason ``tls-error``: a client that connects
    and sends nothing holds a connection slot for no longer than this."""

    min_version: TLSVersion = attrs.field(default="1.2", validator=one_of(TLS_VERSIONS))
    """The oldest TLS version accepted: ``"1.2"`` or ``"1.3"``; a client offering only
    older versions fails the handshake (``tls-error``)."""


# -- UDP echo (RFC 862; issue 15) --


@attrs.frozen(kw_only=True)
class UDPConfig:
    """Serve UDP echo (RFC 862) on the TCP listener's host and port(s): each
    datagram accepted is echoed once, unchanged, to its source.

    UDP echo can be turned into a loop or a reflector, so every datagram passes
    these checks first (see :mod:`trio_echo._udp_policy`): a source port of a
    small service is dropped (``dropped_port``), a datagram larger than
    :attr:`ConnectionConfig.max_message` is dropped, never truncated
    (``dropped_size``), and token buckets cap the datagrams and bytes per
    second from each source address (``dropped_rate_source``) and in total
    (``dropped_rate_global``).  A bucket holds one second's worth (at least
    one datagram of ``max_message`` bytes) and starts full.  Any rate may be
    ``None`` to lift it.

    Frozen and keyword-only; :exc:`TypeError`/:exc:`ValueError` name the field.
    """

    source_rate: int | None = attrs.field(default=1000, validator=optional(int_in_range(1)))
    """Datagrams per second echoed to one source address."""

    source_bytes: int | None = attrs.field(default=1 << 20, validator=optional(int_in_range(1)))
    """Bytes per second echoed to one source address (1 MiB/s)."""

    global_rate: int | None = attrs.field(default=20000, validator=optional(int_in_range(1)))
    """Datagrams per second echoed in total."""

    global_bytes: int | None = attrs.field(default=16 << 20, validator=optional(int_in_range(1)))
    """Bytes per second echoed in total (16 MiB/s)."""

    max_sources: int = attrs.field(default=16384, validator=int_in_range(1))
    """Source addresses whose buckets are remembered; beyond it the least
    recently seen is forgotten (so memory stays bounded under a flood from
    many addresses, while the global bucket still caps the total)."""


def _serves_any(instance: ServerConfig, attribute: attrs.Attribute[Any], value: object) -> None:
    listener = instance.listener
    if not listener.tcp and listener.unix is None and value is None:
        raise ValueError("udp is required when neither tcp nor unix is on: nothing to serve")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything :func:`trio_echo.serve` needs.

    Frozen and keyword-only; every part has working defaults, so
    ``ServerConfig()`` serves plain TCP on 127.0.0.1:9999 (add ``udp`` for UDP
    echo, ``listener.unix`` for a Unix socket).  A part of the
    wrong class raises :exc:`TypeError` naming the field; no I/O.

    Example::

        config = ServerConfig(
            listener=ListenerConfig(port=0),
            connection=ConnectionConfig(rounds=3, framing="line"),
        )
    """

    listener: ListenerConfig = attrs.field(
        factory=ListenerConfig,
        validator=instance_of(ListenerConfig, what="a ListenerConfig"),
    )
    connection: ConnectionConfig = attrs.field(
        factory=ConnectionConfig,
        validator=instance_of(ConnectionConfig, what="a ConnectionConfig"),
    )
    tls: TLSConfig | None = attrs.field(
        default=None,
        validator=optional(instance_of(TLSConfig, what="a TLSConfig or None")),
    )
    """Serve over TLS with this configuration; ``None`` serves plain TCP."""

    udp: UDPConfig | None = attrs.field(
        default=None,
        validator=[optional(instance_of(UDPConfig, what="a UDPConfig or None")), _serves_any],
    )
    """Also serve UDP echo with this configuration; ``None`` serves no UDP."""

    worker: int = attrs.field(default=0, validator=int_in_range(0))
    """This server's number among ``--workers`` (1 to N), shown as ``{worker}`` in
    :attr:`ConnectionConfig.hello` and the metrics; ``0`` for a server that is not a worker."""
