"""Idle deadlines of a trio run's connections, kept by one sweep task, not a cancel scope each.

A cancel scope per connection costs each idle connection about 0.75 KiB (its
cancel status and the set of its children) and re-keys trio's deadline heap
whenever the deadline moves.  Instead, each connection keeps its deadline in a
plain float and sits in one *bucket* of this run's :class:`IdleSweep`: the
connections keyed by a time at or after their deadline, rounded up to the
connection's granularity.  The sweep task sleeps until the earliest bucket,
then asks each connection in it to check itself: one past its deadline while
waiting is woken (:meth:`Sweepable.idle_check`); any other goes into the
bucket of its newer deadline.  Moving a deadline is therefore only a float
write; the bucket catches up lazily.

The sweep is a trio system task, started on first use and cancelled when the
run ends, so a :class:`~trio_echo._connection.Connection` works with or
without a server around it.
"""

from __future__ import annotations

import heapq
import math
from typing import Final, Protocol

import trio

__all__ = ["IdleSweep", "Sweepable", "current_sweep"]

_SWEEP: Final[trio.lowlevel.RunVar[IdleSweep]] = trio.lowlevel.RunVar("trio_echo_idle_sweep")


class Sweepable(Protocol):
    """What the sweep asks of a connection in a bucket whose time has come."""

    def idle_check(self, now: float) -> None:
        """Expire (and wake) if past the idle deadline while waiting; otherwise
        :meth:`IdleSweep.add` again with the current deadline."""


class IdleSweep:
    """Buckets of connections by idle deadline, and the task that empties them in order.

    Cancellation:
      :meth:`run` sleeps until cancelled (the end of the trio run).
    """

    def __init__(self) -> None:
        # Buckets are dicts used as sets: a dict's table takes about half the
        # memory of a set's for the same entries (it grows threefold, not fourfold).
        self._buckets: dict[float, dict[Sweepable, None]] = {}
        # Bucket times, earliest first (a time may stay after its bucket is gone).
        self._times: list[float] = []
        # The scope of the sweep's current sleep: an earlier bucket moves its deadline.
        self._sleep = trio.CancelScope()

    def add(self, conn: Sweepable, deadline: float, granularity: float) -> float:
        """Put *conn* in the bucket for *deadline*; return the bucket's time (the key
        for :meth:`discard`), at or less than *granularity* after *deadline*."""
        key = math.ceil(deadline / granularity) * granularity
        if key < deadline:  # float rounding: never early
            key += granularity
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            heapq.heappush(self._times, key)
            if key < self._sleep.deadline:
                self._sleep.deadline = key
        bucket[conn] = None
        return key

    def discard(self, conn: Sweepable, key: float) -> None:
        """Forget *conn* (it closed), which :meth:`add` put in bucket *key*."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.pop(conn, None)

    async def run(self) -> None:
        """Empty each bucket when its time comes, forever."""
        times = self._times
        while True:
            now = trio.current_time()
            if not times or times[0] > now:
                self._sleep = trio.CancelScope(deadline=times[0] if times else math.inf)
                with self._sleep:
                    await trio.sleep_forever()
                continue
            key = heapq.heappop(times)
            bucket = self._buckets.pop(key, None)
            if bucket:
                for conn in bucket:
                    conn.idle_check(now)
                # Many connections may come due at once: let them run.
                await trio.lowlevel.checkpoint()


def current_sweep() -> IdleSweep:
    """This trio run's sweep, started as a system task on first use."""
    try:
        return _SWEEP.get()
    except LookupError:
        sweep = IdleSweep()
        _SWEEP.set(sweep)
        trio.lowlevel.spawn_system_task(sweep.run, name="trio_echo idle sweep")
        return sweep
