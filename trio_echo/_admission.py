"""Who may connect: trusted PROXY sources (``--proxy-trusted``) and per-address limits.

Both act as steps before the echo loop (see :class:`~trio_echo._connection.Step`),
so a refused client is counted and closed like any other connection, with a
reason of its own and a clean close (EOF, then a drain bounded by
``drain_timeout``):

* ``proxy-untrusted``: with ``--proxy-protocol`` and ``--proxy-trusted``, a
  TCP source outside the trusted networks is refused before its header is read.
* ``per-ip-limit``: the client address already has ``--max-connections-per-ip``
  connections open.
* ``per-ip-rate``: the client address opened connections faster than
  ``--connection-rate-per-ip`` per second (a token bucket holding one
  second's worth, at least one).

Behind a PROXY balancer the per-address limits apply to the client the
header names, not to the balancer.  Each kind of refusal is logged at most once
per :data:`WARNING_INTERVAL`; the table of addresses is bounded
(:data:`MAX_TRACKED`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from ._logs import WARNING_INTERVAL, LogLimiter
from ._reasons import PER_IP_LIMIT, PER_IP_RATE
from ._sockets import host_of
from ._transports import Ended, Owner

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["AddressLimits", "PerAddressStep", "Refuse", "Warnings"]

LOGGER = logging.getLogger("trio_echo")

#: At most this many addresses' rate buckets are remembered; beyond it the
#: least recently seen address is forgotten first (its bucket starts full again).
#: Open-connection counts need no bound: there are at most max_connections.
MAX_TRACKED: Final = 65536

#: At most one warning per kind of refusal per this many seconds.


class Warnings:
    """Logs each kind of refusal at most once per WARNING_INTERVAL, with a count."""

    def __init__(self) -> None:
        self._limiter = LogLimiter(WARNING_INTERVAL)
        self._suppressed: dict[str, int] = {}

    def warn(self, reason: str, message: str) -> None:
        if not self._limiter.allow(reason, trio.current_time()):
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        more = self._suppressed.pop(reason, 0)
        extra = f" (and {more} more since the last such line)" if more else ""
        LOGGER.warning("refused %s: %s%s", reason, message, extra)


class Refuse:
    """The step that ends a connection at once with *reason* (a clean close)."""

    timeout = math.inf

    def __init__(self, reason: str, warnings: Warnings, message: str) -> None:
        self.reason = reason
        self._warnings = warnings
        self._message = message

    async def run(self, owner: Owner) -> None:
        self._warnings.warn(self.reason, f"{owner.peer}: {self._message}")
        raise Ended(self.reason, drain=True)

    def timed_out(self, owner: Owner) -> Ended:  # pragma: no cover -- run() never waits
        return Ended(self.reason, drain=True)


class AddressLimits:
    """Per-address open-connection counts and connection-rate buckets, for one server."""

    def __init__(self, *, max_open: int | None, rate: float | None) -> None:
        self.max_open = max_open
        self.rate = rate
        self.burst = max(1.0, rate or 0.0)
        self.open: dict[str, int] = {}
        # host -> (tokens, when last updated); insertion order is recency.
        self.buckets: dict[str, tuple[float, float]] = {}
        self.warnings = Warnings()

    def admit(self, host: str, now: float) -> str | None:
        """Take a place for a new connection from *host*; ``None`` if admitted
        (then :meth:`release` it when it closes), else the refusal reason."""
        if self.max_open is not None and self.open.get(host, 0) >= self.max_open:
            return PER_IP_LIMIT
        if self.rate is not None and not self._take_token(host, now):
            return PER_IP_RATE
        self.open[host] = self.open.get(host, 0) + 1
        return None

    def release(self, host: str) -> None:
        left = self.open[host] - 1
        if left:
            self.open[host] = left
        else:
            del self.open[host]

    def _take_token(self, host: str, now: float) -> bool:
        assert self.rate is not None
        tokens, then = self.buckets.pop(host, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        admitted = tokens >= 1.0
        self.buckets[host] = (tokens - 1.0 if admitted else tokens, now)
        if len(self.buckets) > MAX_TRACKED:
            del self.buckets[next(iter(self.buckets))]
        return admitted


class PerAddressStep:
    """The step that admits a connection under :class:`AddressLimits` (after any
    PROXY header, so that it counts the real client).

    Its :meth:`closed` must run when the connection closes (the factory makes
    it the connection's close callback), to give the place back.
    """

    timeout = math.inf

    def __init__(self, limits: AddressLimits, on_close: Callable[[Connection], None]) -> None:
        self._limits = limits
        self._on_close = on_close
        self._host: str | None = None

    async def run(self, owner: Owner) -> None:
        limits = self._limits
        host = host_of(owner.peer)
        reason = limits.admit(host, trio.current_time())
        if reason is not None:
            if reason == PER_IP_LIMIT:
                what = f"{limits.max_open} connections open already"
            else:
                what = f"more than {limits.rate:g} new connections per second"
            limits.warnings.warn(reason, f"{host}: {what}")
            raise Ended(reason, drain=True)
        self._host = host

    def timed_out(self, owner: Owner) -> Ended:  # pragma: no cover -- run() never waits
        return Ended(PER_IP_LIMIT, drain=True)

    def closed(self, conn: Connection) -> None:
        if self._host is not None:
            self._limits.release(self._host)
            self._host = None
        self._on_close(conn)
