"""Faults injected on purpose: a sans-IO plan and one wrapper transport that applies it.

:class:`FaultPlan` decides, without I/O, what each echo suffers: the delay
before it, the size of its pieces, and how many of its bytes may go out before
the connection halts.  :class:`FaultTransport` carries that out over any
transport, paces what it reads (``read_bandwidth``), delays the close
(``slow_close``) and stops answering (``timeout``).  The server wraps a
connection's transport in it only when :attr:`Faults.enabled` (and the
connection is targeted), so with every fault off the echo loop runs exactly
as it would without this module.  :meth:`FaultTransport.switch` changes an
open connection's faults (``EchoServer.set_faults(..., existing=True)``).
"""

from __future__ import annotations

import math
import socket
import struct
from collections import Counter
from collections.abc import Awaitable
from functools import partial
from typing import Final, NoReturn

import attrs
import trio

from ._config import Faults
from ._faultplan import FaultPlan, chosen, in_networks
from ._protocol import Data
from ._reasons import LIMIT_DATA, STALLED, TIMEOUT_INJECTED
from ._transports import Ended, Owner, Transport, WaitScopes, Wrapper

__all__ = ["FaultPlan", "FaultTransport", "chosen", "describe", "fault_summary", "in_networks"]

# Keys of the fault event counters (statistics and the per-connection log line).
LATENCY: Final = "latency"  # echoes delayed
FRAGMENT: Final = "fragment"  # pieces written
BANDWIDTH: Final = "bandwidth"  # waits to keep to the rate
STALL: Final = "stall"  # connections stalled
RESET: Final = "reset"  # connections reset
SLOW_CLOSE: Final = "slow_close"  # closes delayed
TIMEOUT: Final = "timeout"  # connections that stopped answering
LIMIT: Final = "limit_data"  # connections closed at the data limit
READ_BANDWIDTH: Final = "read_bandwidth"  # waits before reading, to keep to the rate

#: Every event key, in the order the metrics list them.
KINDS: Final = (
    LATENCY,
    FRAGMENT,
    BANDWIDTH,
    STALL,
    RESET,
    SLOW_CLOSE,
    TIMEOUT,
    LIMIT,
    READ_BANDWIDTH,
)


class FaultTransport(Wrapper):
    """A transport that applies :class:`Faults` to the connection over
    *transport* (any transport: the plain socket, TLS, a memory stream).

    It talks to its connection only through the
    :class:`~trio_echo._transports.Owner` interface.  While a fault acts on
    the echoes, ``send_now`` sends nothing, so every echo goes through
    :meth:`send_all`; otherwise sends go straight to *transport*.

    Latency and pacing delays happen while the connection is busy echoing, so
    a graceful stop lets them finish (within the server's grace), and the idle
    timeout counts from the end of each delay, never during it.  A stall or an
    injected ``timeout`` waits like an idle connection: a stop ends it at
    once, the idle timeout ends it with a clean close.  A reset first waits
    until the kernel has transmitted every byte written, so the client reads
    exactly the bytes before the count, then the reset; without a TCP socket
    underneath (memory streams, Unix sockets) the connection is just closed at
    once.  A halt raises :exc:`~trio_echo._transports.Ended` with its close reason.

    *faults* ``None`` passes everything through; :meth:`switch` changes them.
    """

    def __init__(
        self,
        transport: Transport,
        faults: Faults | None,
        *,
        seed: int | None,
        events: Counter[str],
    ) -> None:
        super().__init__(transport)
        self._seed = seed
        # The server's counters (statistics); the connection keeps its own.
        self._server_events = events
        #: This connection's fault events, for its close line.
        self.events: Counter[str] = Counter()
        # Bytes read but not yet handed on (read pacing), kept across switches.
        self._pending: memoryview = memoryview(b"")
        self._waits = WaitScopes()
        self._faults: Faults | None = None
        self._plan: FaultPlan | None = None
        self.switch(faults)
        #: Run before echoing: a count of 0 halts before the first echo.
        self.start = _HaltAtStart(self)

    def switch(self, faults: Faults | None) -> None:
        """Apply *faults* (``None``: none) from the next operation on.

        Counts (``stall_after``, ``reset_after``, ``limit_data``) and the
        jitter's sequence start again from here; bytes already read are kept.
        """
        self._faults = faults
        self._plan = None if faults is None else FaultPlan(faults, seed=self._seed)
        self._paced_until = -math.inf
        self._read_at = -math.inf

    @property
    def half_close_after_eof(self) -> bool:
        # A slow close delays the close after the client's EOF too.
        slow = self._faults is not None and bool(self._faults.slow_close)
        return slow or self._inner.half_close_after_eof

    @property
    def close_delay(self) -> float:
        faults = self._faults
        return (faults.slow_close if faults is not None else 0.0) + self._inner.close_delay

    def interrupt(self) -> None:
        if self._waits.active:
            self._waits.interrupt()
        else:
            self._inner.interrupt()

    # ---- receiving: read pacing ----

    def try_receive(self) -> Data | None:
        plan = self._plan
        if plan is None or plan.read_slice is None:
            if self._pending:
                pending, self._pending = self._pending, memoryview(b"")
                return pending
            return self._inner.try_receive()
        now = trio.current_time()
        if now < self._read_at:
            return None
        if not self._pending:
            data = self._inner.try_receive()
            if not data:
                return data
            # The base transport's buffer is shared: copy before handing on in pieces.
            self._pending = memoryview(bytes(data))
        piece = self._pending[: plan.read_slice]
        self._pending = self._pending[len(piece) :]
        # Never faster than the rate; an idle spell earns no burst.
        self._read_at = max(now, self._read_at) + len(piece) / self._rate()
        return piece

    def wait_receivable(self) -> Awaitable[None]:
        plan = self._plan
        if self._pending or (plan is not None and plan.read_slice is not None):
            if trio.current_time() < self._read_at:
                return self._paced_wait()
            if self._pending:
                return trio.lowlevel.checkpoint()  # noqa: ASYNC105 -- awaited by the caller
        return self._inner.wait_receivable()

    async def _paced_wait(self) -> None:
        self._count(READ_BANDWIDTH)
        # Interruptible (idle sweep, stop) as any wait for input.
        with self._waits.waiting():
            await self._sleep_until(self._read_at)

    def _rate(self) -> int:
        assert self._faults is not None
        assert self._faults.read_bandwidth is not None
        return self._faults.read_bandwidth

    # ---- sending ----

    def send_now(self, data: Data) -> int:
        plan = self._plan
        if plan is None or not plan.sends:
            return self._inner.send_now(data)
        # Nothing goes out without the faults: the loop then calls send_all.
        return 0

    async def send_all(self, data: Data) -> None:
        plan = self._plan
        faults = self._faults
        if plan is None or faults is None or not plan.sends:
            await self._inner.send_all(data)
            return
        if faults.timeout is not None:
            await self._time_out(faults.timeout)
        # Every fault may block, and the plain socket's receive buffer is shared
        # by the whole server: copy the echo out before anything else runs.
        echo = memoryview(bytes(data))
        delay = plan.delay()
        if delay:
            self._count(LATENCY)
            await self._sleep_until(trio.current_time() + delay)
        allowed = plan.allow(len(echo))
        if plan.piece_size is None:
            if allowed:
                await self._inner.send_all(echo[:allowed])
        else:
            await self._send_pieces(echo[:allowed], faults, plan.piece_size)
        if plan.halted:
            # The loop counts an echo once it is sent; the halt never returns
            # there, so count what went out now.
            self._owner_().echoed(allowed, whole=allowed == len(echo))
            await self.halt()

    async def send_eof(self) -> None:
        faults = self._faults
        if faults is not None and faults.slow_close:
            # Silent: the close waits (a stop's grace bounds it).
            self._count(SLOW_CLOSE)
            await trio.sleep(faults.slow_close)
        await self._inner.send_eof()

    async def halt(self) -> NoReturn:
        """Stall, reset or close at the data limit, now that the count is reached.

        Raises:
          Ended: always, with ``stalled`` or ``limit-data`` (close cleanly) or
            ``reset-injected``.
        """
        assert self._plan is not None
        reason = self._plan.halt_reason
        assert reason is not None
        owner = self._owner_()
        if reason == STALLED:
            self._count(STALL)
            await owner.wait_as_idle(trio.sleep_forever)
            raise Ended(reason, drain=True)
        if reason == LIMIT_DATA:
            self._count(LIMIT)
            await trio.lowlevel.checkpoint()
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

    async def _time_out(self, seconds: float) -> NoReturn:
        """Answer nothing more, drop the client's input, close after *seconds* (0: never).

        Raises:
          Ended: always, ``timeout-injected`` (close cleanly).
        """
        self._count(TIMEOUT)
        deadline = trio.current_time() + seconds if seconds else math.inf
        await self._owner_().wait_as_idle(partial(self._drop_until, deadline))
        raise Ended(TIMEOUT_INJECTED, drain=True)

    async def _drop_until(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            self._pending = memoryview(b"")
            await self._inner.discard_until_eof()
            await trio.sleep_forever()

    async def _send_pieces(self, echo: memoryview, faults: Faults, piece_size: int) -> None:
        fragment_delay = faults.fragment_delay
        bandwidth = faults.bandwidth
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
            if faults.fragment is not None:
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
        transport = self._transport
        faults = transport._faults
        # Decided here, after a PROXY header has named the real client.
        cidrs = None if faults is None else faults.target_cidr
        if cidrs is not None and not in_networks(owner.peer, cidrs):
            transport.switch(None)
        plan = transport._plan
        if plan is not None and plan.halted:
            await transport.halt()
        if faults is not None and plan is not None and faults.timeout is not None:
            await transport._time_out(faults.timeout)
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
