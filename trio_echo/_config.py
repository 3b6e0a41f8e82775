"""Frozen, validated configuration, grouped by who reads it.

:class:`ListenerConfig` is what the accept side needs, :class:`ConnectionConfig`
is what each connection task needs, :class:`TLSConfig` is what serving over TLS
needs, and :class:`ServerConfig` bundles them.  They are built once -- by the
CLI, by the embedding caller or by the pytest plugin -- and passed down
explicitly; nothing reads configuration from anywhere else.
"""

from __future__ import annotations

import functools
import math
import os
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import attrs

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


def _int_in_range(lo: int, hi: int | None = None) -> Any:
    """Validator: a real ``int`` (not ``bool``) with ``lo <= value <= hi``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{attribute.name} must be an int, not {type(value).__name__}: {_short(value)}"
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
                f"not {type(value).__name__}: {_short(value)}"
            )
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            # Where None is allowed, it (not 0) is what turns the setting off.
            off = " (None disables it)" if _is_optional(attribute) else ""
            raise ValueError(
                f"{attribute.name} must be a finite number {bound}{off}, got {value!r}"
            )

    return check


def _is_optional(attribute: attrs.Attribute[Any]) -> bool:
    """Whether the field's annotation admits ``None``."""
    return "None" in str(attribute.type)


def _optional(validator: Any) -> Any:
    return attrs.validators.optional(validator)


def _instance_of(*types: type, what: str) -> Any:
    """Validator: an instance of *types*, described to the user as *what*.

    attrs' own ``instance_of`` raises a tuple with the whole ``Attribute`` in
    it, which prints over several lines; this raises one line naming the field.
    """

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, types):
            raise TypeError(
                f"{attribute.name} must be {what}, not {type(value).__name__}: {_short(value)}"
            )

    return check


def _one_of(choices: tuple[object, ...]) -> Any:
    """Validator: one of *choices* (a one-line error naming the field and the choices)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            allowed = ", ".join(repr(choice) for choice in choices)
            raise ValueError(f"{attribute.name} must be one of {allowed}, got {_short(value)}")

    return check


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to *limit* characters, so that an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# What a file name may be, for the TLS files.
_PATH_TYPES: tuple[type, ...] = (str, os.PathLike)
_PATH = "a path (str or os.PathLike)"


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


def _percent(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a number from 0 to 100."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{attribute.name} must be a percentage, not {type(value).__name__}: {_short(value)}"
        )
    if not 0 <= value <= 100:
        raise ValueError(f"{attribute.name} must be a percentage from 0 to 100, got {value!r}")


def _probability(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a probability, not {type(value).__name__}")
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _target_networks(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a non-empty tuple of CIDR strings."""
    import ipaddress

    if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"{attribute.name} must be a tuple of CIDR strings, got {_short(value)}")
    if not value:
        raise ValueError(f"{attribute.name} must name at least one network (None: every client)")
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"{attribute.name}: {item!r} is not a network like 10.0.0.0/8 or fd00::/8"
            ) from None


@attrs.frozen(kw_only=True)
class Faults:
    """Misbehaviour injected on purpose, to test clients against a bad server.

    Every fault is off by default; :attr:`enabled` says whether any is on, and
    only then does a connection pay for the fault layer.  Faults act on the
    echo (the server-to-client direction), in this order: *latency* before
    each echo, then the echo is written in pieces (*fragment*, *bandwidth*),
    and the connection halts (*stall_after*, *reset_after*) once the given
    number of bytes has been echoed.  UDP echoes (``ServerConfig.udp``) suffer
    *latency* and *jitter* and the UDP-only *loss*, *duplicate* and *reorder*;
    the others act on streams only.

    Example::

        ConnectionConfig(faults=Faults(latency=0.05, jitter=0.01, seed=7, fragment=1))

    Frozen and keyword-only; construction does no I/O.

    Raises:
      TypeError: a value of the wrong type (``bool`` is not an ``int``, a
        duration is a number of seconds, not a string), or a positional argument.
      ValueError: a value out of range, ``jitter`` above ``latency``, or
        ``fragment_delay`` without ``fragment``; the message names the field.
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

    loss: float = attrs.field(default=0.0, validator=_percent)
    """UDP only: drop this percentage of the datagrams that would be echoed
    (each one drawn from the seeded generator); ``0`` is off."""

    duplicate: float = attrs.field(default=0.0, validator=_percent)
    """UDP only: echo this percentage of the datagrams twice; ``0`` is off."""

    reorder: int | None = attrs.field(default=None, validator=_optional(_int_in_range(1)))
    """UDP only: hold a datagram back and echo it after the next *reorder* echoes
    (or after :data:`~trio_echo._udp_faults.REORDER_MAX_HOLD` seconds without them),
    then hold the next one; ``None`` is off.  ``1`` turns 1 2 3 4 into 2 1 4 3."""

    # ---- issue 17: faults past Toxiproxy's ----

    slow_close: float = attrs.field(default=0.0, validator=_seconds(allow_zero=True))
    """Seconds to wait, silent, before each clean close (after the client's EOF,
    ``rounds``, a stall or ``limit_data``): the client sees neither data nor
    EOF meanwhile; ``0`` is off.  A reset is never delayed."""

    timeout: float | None = attrs.field(
        default=None, validator=_optional(_seconds(allow_zero=True))
    )
    """Stop answering: echo nothing more, read and drop what the client sends,
    then close cleanly after this many seconds (close reason
    ``timeout-injected``); ``0`` never closes (Toxiproxy's ``timeout=0``);
    ``None`` is off."""

    limit_data: int | None = attrs.field(default=None, validator=_optional(_int_in_range(0)))
    """Close cleanly once this many bytes have been echoed (mid-message if that
    is where the count falls; close reason ``limit-data``): in an echo the
    same bytes cross both directions; ``None`` is off."""

    read_bandwidth: int | None = attrs.field(default=None, validator=_optional(_int_in_range(1)))
    """Read at most this many bytes per second from the client (the upstream
    twin of :attr:`bandwidth`), so that the client's sends block: its
    send-side backpressure and write timeouts get tested; ``None`` is off."""

    toxicity: float = attrs.field(default=1.0, validator=_probability)
    """The probability that a connection gets these faults at all, drawn once
    per connection from :attr:`seed` and the connection's number; ``1`` is all."""

    target_cidr: tuple[str, ...] | None = attrs.field(
        default=None, validator=_optional(_target_networks)
    )
    """Only clients in one of these networks (CIDR strings; behind a PROXY
    header, the address it names) get the faults; ``None`` is every client."""

    target_connection: int | None = attrs.field(
        default=None, validator=_optional(_int_in_range(1))
    )
    """Only the *k*-th connection opened since these faults were set (1 is
    the first) gets them; ``None`` is every connection."""

    seed: int | None = attrs.field(default=None, validator=_optional(_int_in_range(0)))
    """Seed for the jitter's generator (and for UDP loss and duplication).  Each
    connection draws from its own generator seeded with it, so every connection
    sees the same sequence of delays whatever order connections arrive in.
    ``None`` lets the server pick a seed at start and log it, so that a
    failing run can be replayed."""

    @property
    def datagram_enabled(self) -> bool:
        """Whether any fault that acts on UDP echoes is on (latency, loss,
        duplication, reordering)."""
        return bool(self.latency or self.loss or self.duplicate or self.reorder is not None)

    @property
    def enabled(self) -> bool:
        """Whether any fault on stream echoes is on (:attr:`seed` alone is not a
        fault, and the UDP-only ones do not act on streams)."""
        return bool(
            self.latency
            or self.fragment is not None
            or self.bandwidth is not None
            or self.stall_after is not None
            or self.reset_after is not None
            or self.slow_close
            or self.timeout is not None
            or self.limit_data is not None
            or self.read_bandwidth is not None
        )

    @property
    def random(self) -> bool:
        """Whether the faults draw from :attr:`seed` (jitter, toxicity, UDP loss
        and duplication)."""
        return bool(self.jitter or self.loss or self.duplicate) or self.toxicity < 1


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

    rounds: int | None = attrs.field(default=None, validator=_optional(_int_in_range(1)))
    """Echo this many messages, then half-close and close; ``None`` echoes until the
    client closes."""

    framing: Framing = attrs.field(default="raw", validator=_one_of(FRAMINGS))
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

    faults: Faults = attrs.field(factory=Faults, validator=_instance_of(Faults, what="a Faults"))
    """Misbehaviour to inject on purpose (see :class:`Faults`); all off by default."""

    # ---- operations (issue 16) ----

    hello: str | None = attrs.field(
        default=None, validator=_optional([_instance_of(str, what="a str"), _hello_template])
    )
    """Send this text (UTF-8) once when a connection opens, before any echo; ``None``
    (the default) keeps the echo pure.  Placeholders ``{hostname}``, ``{pid}``,
    ``{worker}`` (:attr:`ServerConfig.worker`) and ``{port}`` (the local port the client
    reached) name the answering server; ``{{`` and ``}}`` are literal braces.  Not an
    echo: it counts in neither rounds nor bytes out."""


def _networks(instance: ListenerConfig, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a tuple of CIDR strings, given with proxy_protocol."""
    import ipaddress

    if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"{attribute.name} must be a tuple of CIDR strings, got {_short(value)}")
    if not value:
        raise ValueError(f"{attribute.name} must name at least one network (None trusts all)")
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"{attribute.name}: {item!r} is not a network like 10.0.0.0/8 or fd00::/8"
            ) from None
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
        validator=_optional(_instance_of(str, what="a str (None binds every address)")),
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

    proxy_protocol: bool = attrs.field(default=False, validator=_instance_of(bool, what="a bool"))
    """Expect every connection to start with a PROXY protocol header (v1 or v2, as
    sent by HAProxy's ``send-proxy``/``send-proxy-v2``, AWS NLB and others) and
    report the client it names as the peer.  A connection without a valid header
    is closed with reason ``proxy-error``; none of its bytes are echoed."""

    proxy_timeout: float = attrs.field(default=3.0, validator=_seconds(allow_zero=False))
    """With :attr:`proxy_protocol`, how long a connection may take to send its
    complete header before it is closed with reason ``proxy-error``."""

    # -- Transports besides TCP (issue 15) --

    tcp: bool = attrs.field(default=True, validator=_instance_of(bool, what="a bool"))
    """Serve stream echo over TCP on :attr:`host`/:attr:`port`; ``False`` serves
    only the Unix socket and/or UDP (``--udp-only``, ``--unix`` alone)."""

    unix: str | os.PathLike[str] | None = attrs.field(
        default=None, validator=_optional(_instance_of(*_PATH_TYPES, what=_PATH))
    )
    """Also serve stream echo on a Unix domain socket at this path, with the same
    rounds, framing, limits, idle timeout, faults and statistics as TCP (the
    connection limit is shared).  A stale socket file is replaced; a live one
    makes :func:`~trio_echo.serve` raise :exc:`OSError` (``EADDRINUSE``).  The
    file is removed at shutdown."""

    unix_mode: int | None = attrs.field(
        default=None, validator=[_optional(_int_in_range(0, 0o777)), _mode_needs_unix]
    )
    """Permissions of the socket file (``0o660``); ``None`` leaves them to the umask."""

    # ---- hardening (issue 16) ----

    proxy_trusted: tuple[str, ...] | None = attrs.field(
        default=None, validator=_optional(_networks)
    )
    """With :attr:`proxy_protocol`, honour a PROXY header only from these source
    networks (CIDR strings such as ``"10.0.0.0/8"``; a bare address is a /32 or
    /128); a connection from elsewhere is closed with reason ``proxy-untrusted``
    before anything is read.  ``None``: every source is trusted."""

    max_connections_per_ip: int | None = attrs.field(
        default=None, validator=_optional(_int_in_range(1))
    )
    """At most this many connections open at once from one client address (behind a
    PROXY balancer: the client the header names); more are closed with reason
    ``per-ip-limit``.  ``None``: no limit."""

    connection_rate_per_ip: float | None = attrs.field(
        default=None, validator=_optional(_seconds(allow_zero=False))
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

    certfile: str | os.PathLike[str] = attrs.field(
        validator=_instance_of(*_PATH_TYPES, what=_PATH)
    )
    """PEM file with the server's certificate chain (and its key, if *keyfile* is ``None``)."""

    keyfile: str | os.PathLike[str] | None = attrs.field(
        default=None, validator=_optional(_instance_of(*_PATH_TYPES, what=_PATH))
    )
    """PEM file with the private key; ``None`` reads it from *certfile*."""

    client_ca: str | os.PathLike[str] | None = attrs.field(
        default=None, validator=_optional(_instance_of(*_PATH_TYPES, what=_PATH))
    )
    """PEM file of CA certificates; when set, every client must present a
    certificate signed by one of them, or its handshake fails (``tls-error``)."""

    handshake_timeout: float = attrs.field(default=10.0, validator=_seconds(allow_zero=False))
    """A client must complete the TLS handshake within this many seconds of being
    accepted, or it is closed with reason ``tls-error``: a client that connects
    and sends nothing holds a connection slot for no longer than this."""

    min_version: TLSVersion = attrs.field(default="1.2", validator=_one_of(TLS_VERSIONS))
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

    source_rate: int | None = attrs.field(default=1000, validator=_optional(_int_in_range(1)))
    """Datagrams per second echoed to one source address."""

    source_bytes: int | None = attrs.field(default=1 << 20, validator=_optional(_int_in_range(1)))
    """Bytes per second echoed to one source address (1 MiB/s)."""

    global_rate: int | None = attrs.field(default=20000, validator=_optional(_int_in_range(1)))
    """Datagrams per second echoed in total."""

    global_bytes: int | None = attrs.field(default=16 << 20, validator=_optional(_int_in_range(1)))
    """Bytes per second echoed in total (16 MiB/s)."""

    max_sources: int = attrs.field(default=16384, validator=_int_in_range(1))
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
        validator=_instance_of(ListenerConfig, what="a ListenerConfig"),
    )
    connection: ConnectionConfig = attrs.field(
        factory=ConnectionConfig,
        validator=_instance_of(ConnectionConfig, what="a ConnectionConfig"),
    )
    tls: TLSConfig | None = attrs.field(
        default=None,
        validator=_optional(_instance_of(TLSConfig, what="a TLSConfig or None")),
    )
    """Serve over TLS with this configuration; ``None`` serves plain TCP."""

    udp: UDPConfig | None = attrs.field(
        default=None,
        validator=[_optional(_instance_of(UDPConfig, what="a UDPConfig or None")), _serves_any],
    )
    """Also serve UDP echo with this configuration; ``None`` serves no UDP."""

    worker: int = attrs.field(default=0, validator=_int_in_range(0))
    """This server's number among ``--workers`` (1 to N), shown as ``{worker}`` in
    :attr:`ConnectionConfig.hello` and the metrics; ``0`` for a server that is not a worker."""


_Config = TypeVar("_Config")


def replace_fields(config: _Config, **overrides: Any) -> _Config:
    """A copy of *config* (any attrs config) with fields replaced by their bare names.

    ``replace_fields(config, rounds=3, port=0)`` sets ``connection.rounds`` and
    ``listener.port``.  Names are found by walking the nested config classes
    (every field whose type is an attrs class), so a field added to any of them
    is accepted with no change here.  A nested config may also be replaced
    whole by its own name (``connection=ConnectionConfig(...)``); bare names
    inside it then apply on top.

    Raises:
      TypeError: for a name that no config class has, or that more than one has.
      ValueError, TypeError: from the validators, naming the field.
    """
    config_class: type = type(config)
    paths = _field_paths(config_class)
    by_path: dict[tuple[str, ...], Any] = {}
    for name, value in overrides.items():
        found = paths.get(name, [])
        if not found:
            known = ", ".join(sorted(paths))
            raise TypeError(f"unknown config field {name!r}; known fields: {known}")
        if len(found) > 1:
            where = " and ".join(".".join(path) for path in found)
            raise TypeError(
                f"ambiguous config field {name!r}: it is {where}; "
                "pass the enclosing config object instead"
            )
        by_path[found[0]] = value
    evolved: _Config = _evolve(config, by_path)
    return evolved


# Cached: resolving type hints costs milliseconds, and a test suite may start a
# server per test (callers only read the result).
@functools.cache
def _field_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, list[tuple[str, ...]]]:
    """Every field name reachable from *cls*, with each path that leads to it."""
    paths: dict[str, list[tuple[str, ...]]] = {}
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        path = (*prefix, field.name)
        paths.setdefault(field.name, []).append(path)
        field_type = hints[field.name]
        if isinstance(field_type, type) and attrs.has(field_type):
            for name, more in _field_paths(field_type, path).items():
                paths.setdefault(name, []).extend(more)
    return paths


def _evolve(instance: Any, by_path: Mapping[tuple[str, ...], Any]) -> Any:
    changes: dict[str, Any] = {}
    for field in attrs.fields(type(instance)):
        name = field.name
        value = by_path.get((name,), getattr(instance, name))
        inner = {path[1:]: v for path, v in by_path.items() if len(path) > 1 and path[0] == name}
        if inner:
            value = _evolve(value, inner)
        if (name,) in by_path or inner:
            changes[name] = value
    return attrs.evolve(instance, **changes)
