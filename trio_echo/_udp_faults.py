"""Sans-IO fault plan for UDP echoes: loss, duplication, reordering, latency and jitter.

:class:`DatagramFaultPlan` turns each datagram the policy admitted into the
echoes to send and when; the UDP endpoint (:mod:`trio_echo._udp`) only sends
them at those times.  Every random draw comes from one generator seeded with
:attr:`Faults.seed`, in arrival order, so a run replays exactly under trio's
``autojump_clock`` (or a real clock, as far as arrival order is the same).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Final

from ._config import Faults

__all__ = ["REORDER_MAX_HOLD", "DatagramFaultPlan", "Echo"]

#: A datagram held back for reordering goes out at the latest this many
#: seconds after it arrived, so a client's last datagram is not held forever.
REORDER_MAX_HOLD: Final = 1.0

# Keys of the fault event counters (statistics().faults).
LOSS: Final = "loss"  # echoes dropped on purpose
DUPLICATE: Final = "duplicate"  # extra copies sent
REORDER: Final = "reorder"  # datagrams held back
LATENCY: Final = "latency"  # echoes delayed

#: One echo to send: (when, payload, destination); the destination is the
#: caller's, passed through untouched.
Echo = tuple[float, bytes, Any]


class DatagramFaultPlan:
    """Decides what becomes of each admitted datagram, with no I/O.

    Call :meth:`admit` per datagram, in arrival order, with the current
    time; it returns the echoes to send and when.  A datagram held for
    reordering comes back from a later :meth:`admit`, or from :meth:`expire`
    once :attr:`held_until` has passed.  *events* counts what was injected.
    """

    __slots__ = ("_faults", "_held", "_held_after", "_rng", "events", "held_until")

    def __init__(self, faults: Faults, *, seed: int | None, events: Counter[str]) -> None:
        self._faults = faults
        self._rng = random.Random(seed)
        self.events = events
        self._held: tuple[bytes, Any] | None = None
        # Echoes still to go out before the held datagram is released.
        self._held_after = 0
        #: When the held datagram goes out at the latest (``inf``: none held).
        self.held_until = math.inf

    def admit(self, data: bytes, destination: Any, now: float) -> list[Echo]:
        """The echoes of *data* (from *destination*) arriving at *now*."""
        faults = self._faults
        rng = self._rng
        if faults.loss and rng.random() * 100 < faults.loss:
            self.events[LOSS] += 1
            return []
        copies = 1
        if faults.duplicate and rng.random() * 100 < faults.duplicate:
            self.events[DUPLICATE] += 1
            copies = 2
        if faults.reorder is not None and self._held is None:
            self.events[REORDER] += 1
            self._held = (data, destination)
            self._held_after = faults.reorder
            self.held_until = now + REORDER_MAX_HOLD
            # Only one copy is held; a duplicate goes out now, ahead of it.
            return self._timed([(data, destination)] * (copies - 1), now)
        out = [(data, destination)] * copies
        if self._held is not None:
            self._held_after -= 1
            if self._held_after <= 0:
                out.append(self._release())
        return self._timed(out, now)

    def expire(self, now: float) -> list[Echo]:
        """The held datagram, if its time is up at *now* (or ``[]``)."""
        if self._held is None or now < self.held_until:
            return []
        return self._timed([self._release()], now)

    def flush(self, now: float) -> list[Echo]:
        """The held datagram, at once (the server is stopping)."""
        if self._held is None:
            return []
        return self._timed([self._release()], now)

    def _release(self) -> tuple[bytes, Any]:
        held = self._held
        assert held is not None
        self._held = None
        self.held_until = math.inf
        return held

    def _timed(self, echoes: list[tuple[bytes, Any]], now: float) -> list[Echo]:
        faults = self._faults
        if not faults.latency:
            return [(now, data, destination) for data, destination in echoes]
        timed = []
        for data, destination in echoes:
            delay = faults.latency
            if faults.jitter:
                # jitter <= latency (validated); max() only absorbs float rounding.
                delay = max(0.0, delay + self._rng.uniform(-faults.jitter, faults.jitter))
            self.events[LATENCY] += 1
            timed.append((now + delay, data, destination))
        return timed
