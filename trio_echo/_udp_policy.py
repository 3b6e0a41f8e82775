"""Sans-IO decisions for UDP echo: which datagrams are answered, and why the others are not.

UDP echo (RFC 862) answers anyone who can forge a source address, so a
server on a reachable address is a reflector, and one pointed at another
small service is half of a packet loop (the echo/chargen loop of
CVE-1999-0103).  :class:`DatagramPolicy` applies, in this order:

1. the source port is one of :data:`BLOCKED_SOURCE_PORTS` -> ``dropped_port``;
2. the datagram is larger than ``max_message`` -> ``dropped_size`` (never
   truncated: a reply is never larger than its request, nor different from it);
3. the source address's token buckets are empty -> ``dropped_rate_source``;
4. the server's token buckets are empty -> ``dropped_rate_global``.

Tokens are taken from the buckets only when a datagram passes every check,
so datagrams dropped by one limit do not use up another.  No I/O and no
clock of its own: the caller passes the time, which makes every decision
reproducible under trio's ``autojump_clock``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from ._config import UDPConfig

__all__ = [
    "BLOCKED_SOURCE_PORTS",
    "DROPPED_PORT",
    "DROPPED_RATE_GLOBAL",
    "DROPPED_RATE_SOURCE",
    "DROPPED_SIZE",
    "DatagramPolicy",
    "TokenBucket",
]

#: Source ports never answered: 0 (invalid) and the small services an echo
#: reply could loop with or reflect to -- echo (7), daytime (13), qotd (17),
#: chargen (19) and time (37).
BLOCKED_SOURCE_PORTS: Final = frozenset({0, 7, 13, 17, 19, 37})

# Drop reasons, as counted in statistics().udp.dropped_by_reason.
DROPPED_PORT: Final = "dropped_port"
DROPPED_SIZE: Final = "dropped_size"
DROPPED_RATE_SOURCE: Final = "dropped_rate_source"
DROPPED_RATE_GLOBAL: Final = "dropped_rate_global"


class TokenBucket:
    """Two token buckets refilled together: datagrams and bytes per second.

    Each holds at most one second's worth (*capacity* of bytes at least one
    largest datagram, so that every admissible datagram can eventually pass)
    and starts full.  A rate of ``None`` is no limit.
    """

    __slots__ = ("_byte_capacity", "_byte_rate", "_rate", "bytes", "datagrams", "stamp")

    def __init__(
        self, rate: int | None, byte_rate: int | None, *, largest: int, now: float
    ) -> None:
        self._rate = rate
        self._byte_rate = byte_rate
        self._byte_capacity = None if byte_rate is None else max(byte_rate, largest)
        self.datagrams = float(rate) if rate is not None else 0.0
        self.bytes = float(self._byte_capacity) if self._byte_capacity is not None else 0.0
        self.stamp = now

    def allows(self, size: int, now: float) -> bool:
        """Refill up to *now*; whether a datagram of *size* bytes fits (takes nothing)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.stamp = now
            if self._rate is not None:
                self.datagrams = min(float(self._rate), self.datagrams + elapsed * self._rate)
            if self._byte_rate is not None:
                assert self._byte_capacity is not None
                self.bytes = min(
                    float(self._byte_capacity), self.bytes + elapsed * self._byte_rate
                )
        return (self._rate is None or self.datagrams >= 1.0) and (
            self._byte_rate is None or self.bytes >= size
        )

    def take(self, size: int) -> None:
        """Take one datagram of *size* bytes (after :meth:`allows` said yes)."""
        self.datagrams -= 1.0
        self.bytes -= size


class DatagramPolicy:
    """Decides, per datagram, whether to echo it (see the module docstring).

    The per-source buckets live in a table of at most ``max_sources``
    entries, least recently seen first: a new source beyond that evicts the
    oldest one, so a flood from many addresses costs a bounded amount of
    memory.  An evicted source comes back with a full bucket; the global
    bucket is what bounds the total under such a flood.
    """

    __slots__ = ("_global", "_largest", "_max_sources", "_per_source", "_sources", "_udp")

    def __init__(self, config: UDPConfig, *, max_message: int, now: float) -> None:
        self._udp = config
        self._largest = max_message
        self._max_sources = config.max_sources
        self._per_source = config.source_rate is not None or config.source_bytes is not None
        self._global = TokenBucket(
            config.global_rate, config.global_bytes, largest=max_message, now=now
        )
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def sources(self) -> int:
        """Source addresses remembered now (at most ``max_sources``)."""
        return len(self._sources)

    def decide(self, host: str, port: int, size: int, now: float) -> str | None:
        """``None`` to echo a datagram of *size* bytes from *host*:*port* at
        time *now* (its tokens are then taken), else the drop reason."""
        if port in BLOCKED_SOURCE_PORTS:
            return DROPPED_PORT
        if size > self._largest:
            return DROPPED_SIZE
        source = None
        if self._per_source:
            sources = self._sources
            source = sources.get(host)
            if source is None:
                if len(sources) >= self._max_sources:
                    sources.popitem(last=False)
                udp = self._udp
                source = sources[host] = TokenBucket(
                    udp.source_rate, udp.source_bytes, largest=self._largest, now=now
                )
            else:
                sources.move_to_end(host)
            if not source.allows(size, now):
                return DROPPED_RATE_SOURCE
        if not self._global.allows(size, now):
            return DROPPED_RATE_GLOBAL
        self._global.take(size)
        if source is not None:
            source.take(size)
        return None
