"""Faults injected on purpose: a sans-IO plan and one wrapper transport that applies it.

:class:`FaultPlan` decides, without I/O, what each echo suffers: the delay
before it, the size of its pieces, and how many of its bytes may go out before
the connection halts.  :class:`FaultTransport` carries that out over any
transport.  The server wraps a connection's transport in it only when
:attr:`Faults.enabled`, so with every fault off the echo loop runs exactly as
it would without this module.
"""

from __future__ import annotations

import math
import random
import socket
import struct
from collections import Counter
from functools import partial
from typing import Final, NoReturn

import attrs
import trio

from ._config import Faults
from ._protocol import Data
from ._reasons import RESET_INJECTED, STALLED
from ._transports import Ended, Owner, Transport, Wrapper

__all__ = ["FaultPlan", "FaultTransport", "describe", "fault_summary"]

# Keys of the fault event counters (statistics and the per-connection log line).
LATENCY: Final = "latency"  # echoes delayed
FRAGMENT: Final = "fragment"  # pieces written
BANDWIDTH: Final = "bandwidth"  # waits to keep to the rate
STALL: Final = "stall"  # connections stalled
RESET: Final = "reset"  # connections reset

# Bandwidth pacing writes pieces of at most this fraction of a second's worth
# of bytes, so the rate holds over any window longer than that.
PACING_SLICE: Final = 0.01


class FaultPlan:
    """One connection's fault decisions, with no I/O (as :class:`EchoProtocol`).

    Call :meth:`delay` once per echo, then :meth:`allow` with its length; send
    the allowed prefix in pieces of :attr:`piece_size`; once :attr:`halted`,
    send nothing more and end the connection with :attr:`halt_reason`.
    """

    __slots__ = ("_budget", "_jitter", "_latency", "_rng", "halt_reason", "halted", "piece_size")

    def __init__(self, faults: Faults, *, seed: int | None) -> None:
        self._latency = faults.latency
        self._jitter = faults.jitter
        self._rng = random.Random(seed)
        sizes = [size for size in (faults.fragment, _pacing_slice(faults.bandwidth)) if size]
        #: The largest piece one send may write, ``None`` for the whole echo.
        self.piece_size: int | None = min(sizes) if sizes else None
        # Bytes that may still be echoed before the halt, None for no halt.  A
        # reset at the same count as a stall wins: the stall would never end.
        limits = [
            (limit, reason)
            for limit, reason in (
                (faults.reset_after, RESET_INJECTED),
                (faults.stall_after, STALLED),
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


class FaultTransport(Wrapper):
    """A transport that applies a :class:`FaultPlan` to the echoes sent through
    *transport* (any transport: the plain socket, TLS, a memory stream).

    It talks to its connection only through the
    :class:`~trio_echo._transports.Owner` interface.  ``send_now`` sends
    nothing, so every echo goes through :meth:`send_all`; receiving is left
    to *transport*.

    Latency and pacing delays happen while the connection is busy echoing, so
    a graceful stop lets them finish (within the server's grace), and the idle
    timeout counts from the end of each delay, never during it.  A stall
    waits like an idle connection: a stop ends it at once, the idle timeout
    ends it with a clean close.  A reset first waits until the kernel has
    transmitted every byte written, so the client reads exactly the bytes
    before the count, then the reset; without a TCP socket underneath (memory
    streams, Unix sockets) the connection is just closed at once.  Either way the halt
    raises :exc:`~trio_echo._transports.Ended` with ``stalled`` or
    ``reset-injected``.
    """

    def __init__(
        self, transport: Transport, faults: Faults, *, seed: int | None, events: Counter[str]
    ) -> None:
        super().__init__(transport)
        self._faults = faults
        self._plan = FaultPlan(faults, seed=seed)
        # The server's counters (statistics); the connection keeps its own.
        self._server_events = events
        #: This connection's fault events, for its close line.
        self.events: Counter[str] = Counter()
        self._paced_until = -math.inf
        #: Run before echoing: a count of 0 halts before the first echo.
        self.start = _HaltAtStart(self)

    def send_now(self, data: Data) -> int:
        # Nothing goes out without the faults: the loop then calls send_all.
        return 0

    async def send_all(self, data: Data) -> None:
        plan = self._plan
        # Every fault may block, and the plain socket's receive buffer is shared
        # by the whole server: copy the echo out before anything else runs.
        echo = memoryview(bytes(data))
        delay = plan.delay()
        if delay:
            self._count(LATENCY)
            await self._sleep_until(trio.current_time() + delay)
        allowed = plan.allow(len(echo))
        if self._faults.fragment is None and self._faults.bandwidth is None:
            if allowed:
                await self._inner.send_all(echo[:allowed])
        else:
            await self._send_pieces(echo[:allowed])
        if plan.halted:
            # The loop counts an echo once it is sent; the halt never returns
            # there, so count what went out now.
            self._owner_().echoed(allowed, whole=allowed == len(echo))
            await self.halt()

    async def halt(self) -> NoReturn:
        """Stall or reset, now that the count is reached.

        Raises:
          Ended: always, with ``stalled`` (close cleanly) or ``reset-injected``.
        """
        reason = self._plan.halt_reason
        assert reason is not None
        owner = self._owner_()
        if reason == STALLED:
            self._count(STALL)
            await owner.wait_as_idle(trio.sleep_forever)
            raise Ended(reason, drain=True)
        self._count(RESET)
        sock = self.socket()
        # A Unix socket has no reset: what was written stays readable, then EOF.
        if sock is None or sock.family == socket.AF_UNIX:
            await trio.lowlevel.checkpoint()
        else:
            await owner.wait_as_idle(partial(_wait_transmitted, sock))
            _linger_zero(sock)
        raise Ended(reason)

    async def _send_pieces(self, echo: memoryview) -> None:
        piece_size = self._plan.piece_size
        assert piece_size is not None
        fragment_delay = self._faults.fragment_delay
        bandwidth = self._faults.bandwidth
        send = self._inner.send_all
        for start in range(0, len(echo), piece_size):
            piece = echo[start : start + piece_size]
            if start and fragment_delay:
                await self._sleep_until(trio.current_time() + fragment_delay)
            if bandwidth is not None:
                # Never faster than the rate; an idle spell earns no burst.
                now = trio.current_time()
                at = max(now, self._paced_until)
                self._paced_until = at + len(piece) / bandwidth
                if at > now:
                    self._count(BANDWIDTH)
                    await self._sleep_until(at)
            if self._faults.fragment is not None:
                self._count(FRAGMENT)
            await send(piece)

    async def _sleep_until(self, deadline: float) -> None:
        # An injected delay is the server's doing, not the client's idleness.
        self._owner_().defer_idle(deadline)
        await trio.sleep_until(deadline)

    def _count(self, event: str) -> None:
        self.events[event] += 1
        self._server_events[event] += 1

    def _owner_(self) -> Owner:
        assert self._owner is not None, "used before Connection bound it"
        return self._owner


class _HaltAtStart:
    """The step before echoing that halts at once when a count is 0 (after TLS)."""

    timeout = math.inf

    def __init__(self, transport: FaultTransport) -> None:
        self._transport = transport

    async def run(self, owner: Owner) -> None:
        if self._transport._plan.halted:
            await self._transport.halt()
        await trio.lowlevel.checkpoint()

    def timed_out(self, owner: Owner) -> Ended:  # pragma: no cover - no timeout
        raise AssertionError("an unbounded step cannot time out")


async def _wait_transmitted(sock: socket.socket | trio.socket.SocketType) -> None:
    """Wait until *sock* has no bytes left that the kernel has not transmitted.

    With ``TCP_NOTSENT_LOWAT`` at 1, Linux reports the socket writable only
    once nothing written is waiting to be sent; closing with ``SO_LINGER`` 0
    would otherwise throw those bytes away.
    """
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is None:  # pragma: no cover - not on Linux
        await trio.lowlevel.checkpoint()
        return
    sock.setsockopt(socket.IPPROTO_TCP, lowat, 1)
    await trio.lowlevel.wait_writable(sock)


def _linger_zero(sock: socket.socket | trio.socket.SocketType) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def describe(faults: Faults, *, seed: int | None) -> str:
    """The faults that are on, as ``name=value`` pairs for the log."""
    parts = [
        f"{field.name}={value!r}"
        for field in attrs.fields(Faults)
        if field.name != "seed" and (value := getattr(faults, field.name)) != field.default
    ]
    if faults.random:
        parts.append(f"seed={seed}")
    return " ".join(parts)


def fault_summary(transport: object) -> str:
    """``latency:3,fragment:120``: the events of a connection's :class:`FaultTransport`
    (its outermost transport), ``none`` for none."""
    events = transport.events if isinstance(transport, FaultTransport) else None
    if not events:
        return "none"
    return ",".join(f"{name}:{count}" for name, count in sorted(events.items()))
