"""The ``Faults`` config: misbehaviour injected on purpose, frozen and validated."""

from __future__ import annotations

from typing import Any

import attrs

from ._validators import int_in_range, networks, optional, percent, probability, seconds

__all__ = ["Faults"]


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

    latency: float = attrs.field(default=0.0, validator=seconds(allow_zero=True))
    """Seconds to wait before each echo; ``0`` is off."""

    jitter: float = attrs.field(
        default=0.0, validator=[seconds(allow_zero=True), _jitter_within_latency]
    )
    """Each delay is ``latency + uniform(-jitter, +jitter)`` seconds, drawn from a
    generator seeded with :attr:`seed`; at most :attr:`latency`, so no delay is negative."""

    fragment: int | None = attrs.field(default=None, validator=optional(int_in_range(1)))
    """Write each echo in pieces of at most this many bytes, one send per piece;
    ``None`` is off."""

    fragment_delay: float = attrs.field(
        default=0.0, validator=[seconds(allow_zero=True), _delay_needs_fragment]
    )
    """Seconds to wait between the pieces of one echo (needs :attr:`fragment`)."""

    bandwidth: int | None = attrs.field(default=None, validator=optional(int_in_range(1)))
    """Pace the echoes of each connection to at most this many bytes per second;
    ``None`` is off."""

    stall_after: int | None = attrs.field(default=None, validator=optional(int_in_range(0)))
    """After echoing this many bytes, stop reading and writing and hold the
    connection open silently until the idle timeout (close reason ``stalled``);
    ``None`` is off, ``0`` stalls before the first echo."""

    reset_after: int | None = attrs.field(default=None, validator=optional(int_in_range(0)))
    """After echoing this many bytes, abort the connection with a TCP reset,
    mid-message if that is where the count falls (close reason
    ``reset-injected``); ``None`` is off, ``0`` resets before the first echo."""

    loss: float = attrs.field(default=0.0, validator=percent)
    """UDP only: drop this percentage of the datagrams that would be echoed
    (each one drawn from the seeded generator); ``0`` is off."""

    duplicate: float = attrs.field(default=0.0, validator=percent)
    """UDP only: echo this percentage of the datagrams twice; ``0`` is off."""

    reorder: int | None = attrs.field(default=None, validator=optional(int_in_range(1)))
    """UDP only: hold a datagram back and echo it after the next *reorder* echoes
    (or after :data:`~trio_echo._udp_faults.REORDER_MAX_HOLD` seconds without them),
    then hold the next one; ``None`` is off.  ``1`` turns 1 2 3 4 into 2 1 4 3."""

    # ---- issue 17: faults past Toxiproxy's ----

    slow_close: float = attrs.field(default=0.0, validator=seconds(allow_zero=True))
    """Seconds to wait, silent, before each clean close (after the client's EOF,
    ``rounds``, a stall or ``limit_data``): the client sees neither data nor
    EOF meanwhile; ``0`` is off.  A reset is never delayed."""

    timeout: float | None = attrs.field(default=None, validator=optional(seconds(allow_zero=True)))
    """Stop answering: echo nothing more, read and drop what the client sends,
    then close cleanly after this many seconds (close reason
    ``timeout-injected``); ``0`` never closes (Toxiproxy's ``timeout=0``);
    ``None`` is off."""

    limit_data: int | None = attrs.field(default=None, validator=optional(int_in_range(0)))
    """Close cleanly once this many bytes have been echoed (mid-message if that
    is where the count falls; close reason ``limit-data``): in an echo the
    same bytes cross both directions; ``None`` is off."""

    read_bandwidth: int | None = attrs.field(default=None, validator=optional(int_in_range(1)))
    """Read at most this many bytes per second from the client (the upstream
    twin of :attr:`bandwidth`), so that the client's sends block: its
    send-side backpressure and write timeouts get tested; ``None`` is off."""

    toxicity: float = attrs.field(default=1.0, validator=probability)
    """The probability that a connection gets these faults at all, drawn once
    per connection from :attr:`seed` and the connection's number; ``1`` is all."""

    target_cidr: tuple[str, ...] | None = attrs.field(
        default=None, validator=optional(networks(none_means="None: every client"))
    )
    """Only clients in one of these networks (CIDR strings; behind a PROXY
    header, the address it names) get the faults; ``None`` is every client."""

    target_connection: int | None = attrs.field(default=None, validator=optional(int_in_range(1)))
    """Only the *k*-th connection opened since these faults were set (1 is
    the first) gets them; ``None`` is every connection."""

    seed: int | None = attrs.field(default=None, validator=optional(int_in_range(0)))
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
