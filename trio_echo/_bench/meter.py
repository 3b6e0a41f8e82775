"""What the connections of one run share: the clock, the window measured, the
budget of messages, the histograms and the error counts (no I/O)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

from .histogram import Histogram

__all__ = ["Clock", "Meter"]

Clock = Callable[[], int]
"""Nanoseconds from an arbitrary origin, never decreasing."""

#: "No limit" as a number the hot loops can compare against without a branch.
NEVER: Final = 1 << 62


class Meter:
    """Counts and limits of one run.  The loops read and write the attributes
    directly (one attribute access is the cheapest thing a hot loop can do).
    """

    __slots__ = (
        "bytes",
        "clock",
        "connect_histogram",
        "connects",
        "errors",
        "failure",
        "histogram",
        "last",
        "measure_from",
        "on_round_trip",
        "remaining",
        "round_trips",
        "stop_at",
    )

    def __init__(self, clock: Clock, *, count: int | None) -> None:
        self.clock = clock
        #: Round trips (connect-only: connections) still to measure.
        self.remaining = NEVER if count is None else count
        #: Round trips whose send (open loop: intended send) is before this are not measured.
        self.measure_from = 0
        #: No message is sent (no connection made) from this time on.
        self.stop_at = NEVER
        self.histogram = Histogram()
        self.connect_histogram = Histogram()
        self.round_trips = 0
        self.bytes = 0
        self.connects = 0
        #: When the last measured round trip (or connect) completed.
        self.last = 0
        self.errors: Counter[str] = Counter()
        self.failure: str | None = None
        #: Called with (sequence number, latency in ns) after each measured round trip.
        self.on_round_trip: Callable[[int, int], None] | None = None

    def take(self, now: int) -> bool:
        """Whether a message (or connection) may start at *now*; counts it
        against ``count`` when it will be measured."""
        return self.allow(now, 1) == 1

    def allow(self, now: int, wanted: int) -> int:
        """How many of *wanted* messages may start at *now* (all or none, but
        for the last ones of ``count``); counts them as :meth:`take` does."""
        if now >= self.stop_at:
            return 0
        if now < self.measure_from:
            return wanted
        granted = min(wanted, self.remaining)
        self.remaining -= granted
        return granted

    def round_trip(self, started: int, now: int, size: int, number: int = 0) -> None:
        """Count a round trip of *size* bytes sent (open loop: due) at *started*
        and back whole at *now*, if it is measured (sent after the warm-up);
        ``on_round_trip`` gets *number*, or the count of round trips so far."""
        if started < self.measure_from:
            return
        self.measured((now - started,), now, size)
        if self.on_round_trip is not None:
            self.on_round_trip(number or self.round_trips, now - started)

    def measured(self, latencies: Sequence[int], now: int, size: int) -> None:
        """Count measured round trips of *size* bytes, back whole at *now* with
        these *latencies* (ns): the closed loop counts a batch at a time."""
        self.histogram.record_many(latencies)
        self.round_trips += len(latencies)
        self.bytes += size * len(latencies)
        self.last = now

    def connected(self, latency: int) -> None:
        """Count a connection made in *latency* ns (UDP: a socket connected)."""
        self.connect_histogram.record(latency)
        self.connects += 1

    def error(self, kind: str, line: str) -> None:
        """Count a failed connection; the first failure's *line* is kept."""
        self.errors[kind] += 1
        if self.failure is None:
            self.failure = line
