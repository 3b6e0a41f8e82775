"""Fault decisions without I/O: what each echo suffers, and which connections get faults.

:class:`FaultPlan` is one connection's plan (delays, piece sizes, the byte
count at which it halts); :func:`chosen` and :func:`in_networks` decide which
connections get the faults at all (``toxicity``, ``target_connection``,
``target_cidr``).  :mod:`trio_echo._faults` carries them out.
"""

from __future__ import annotations

import ipaddress
import random
from functools import lru_cache
from typing import Final

from ._config import Faults
from ._reasons import LIMIT_DATA, RESET_INJECTED, STALLED
from ._sockets import Network, host_of, is_trusted

__all__ = ["PACING_SLICE", "FaultPlan", "chosen", "in_networks"]

# Bandwidth pacing writes pieces of at most this fraction of a second's worth
# of bytes, so the rate holds over any window longer than that.
PACING_SLICE: Final = 0.01


class FaultPlan:
    """One connection's fault decisions, with no I/O (as :class:`EchoProtocol`).

    Call :meth:`delay` once per echo, then :meth:`allow` with its length; send
    the allowed prefix in pieces of :attr:`piece_size`; once :attr:`halted`,
    send nothing more and end the connection with :attr:`halt_reason`.
    """

    __slots__ = (
        "_budget",
        "_jitter",
        "_latency",
        "_rng",
        "halt_reason",
        "halted",
        "piece_size",
        "read_slice",
        "sends",
    )

    def __init__(self, faults: Faults, *, seed: int | None) -> None:
        self._latency = faults.latency
        self._jitter = faults.jitter
        self._rng = random.Random(seed)
        sizes = [size for size in (faults.fragment, _pacing_slice(faults.bandwidth)) if size]
        #: The largest piece one send may write, ``None`` for the whole echo.
        self.piece_size: int | None = min(sizes) if sizes else None
        # Bytes that may still be echoed before the halt, None for no halt.  A
        # reset at the same count as a stall wins: the stall would never end.
        # (A data limit is a clean close: the others, if at the same count, win.)
        limits = [
            (limit, reason)
            for limit, reason in (
                (faults.reset_after, RESET_INJECTED),
                (faults.stall_after, STALLED),
                (faults.limit_data, LIMIT_DATA),
            )
            if limit is not None
        ]
        self._budget: int | None = None
        #: ``stalled`` or ``reset-injected``: how the connection ends at the count.
        self.halt_reason: str | None = None
        if limits:
            self._budget, self.halt_reason = min(limits, key=lambda item: item[0])
        #: The count has been reached: send nothing more.
        self.halted = self._budget == 0
        #: The largest piece one read may hand on (``read_bandwidth``), ``None``: no pacing.
        self.read_slice = _pacing_slice(faults.read_bandwidth)
        #: Whether any fault acts on the echoes (else sends go straight through).
        self.sends = bool(
            faults.latency
            or self.piece_size is not None
            or self._budget is not None
            or faults.timeout is not None
        )

    def delay(self) -> float:
        """Seconds to wait before the next echo: ``latency + uniform(-jitter, +jitter)``.

        The generator is drawn only when there is jitter, so the *k*-th call
        returns the same value for the same seed.
        """
        if not self._jitter:
            return self._latency
        # jitter <= latency (validated); max() only absorbs float rounding.
        return max(0.0, self._latency + self._rng.uniform(-self._jitter, self._jitter))

    def allow(self, size: int) -> int:
        """How many bytes of an echo of *size* may be sent; sets :attr:`halted`
        when that reaches the halting count (maybe mid-echo)."""
        budget = self._budget
        if budget is None:
            return size
        allowed = min(size, budget)
        self._budget = budget - allowed
        self.halted = self._budget == 0
        return allowed


def _pacing_slice(bandwidth: int | None) -> int | None:
    if bandwidth is None:
        return None
    return max(1, int(bandwidth * PACING_SLICE))


def chosen(faults: Faults, *, number: int, seed: int | None) -> bool:
    """Whether the *number*-th connection since *faults* were set gets them
    (``target_connection``, ``toxicity``); the same for the same seed and number."""
    if faults.target_connection is not None and number != faults.target_connection:
        return False
    if faults.toxicity >= 1:
        return True
    # A generator per connection, seeded by the seed and the number alone: the
    # draw does not depend on what other connections did.
    return random.Random(f"{seed}:{number}").random() < faults.toxicity


def in_networks(peer: str, cidrs: tuple[str, ...]) -> bool:
    """Whether the client *peer* (``host:port``) is in one of *cidrs*."""
    return is_trusted(host_of(peer), _networks(cidrs))


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
