"""Faults injected on purpose: a connection layer used only when one is on.

:class:`FaultPlan` decides, without I/O, what each echo suffers: the delay
before it, the size of its pieces, and how many of its bytes may go out before
the connection halts.  :class:`FaultInjector` carries that out on the send
side of a connection (``_send_now`` sends nothing, so every echo goes through
its ``_send_all``) and ends a halted connection; the server builds a
:class:`FaultySocketConnection`, :class:`FaultyStreamConnection` or
:class:`FaultyTLSConnection` instead of the plain classes when
:attr:`Faults.enabled`, so with every fault off the echo loop runs exactly as
it would without this module.
"""

from __future__ import annotations

import math
import random
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import attrs
import trio

from ._config import ConnectionConfig, Faults
from ._connection import Connection, SocketConnection, StreamConnection
from ._protocol import Data
from ._tls import TLSConnection

__all__ = [
    "RESET_INJECTED",
    "STALLED",
    "FaultInjector",
    "FaultPlan",
    "FaultySocketConnection",
    "FaultyStreamConnection",
    "FaultyTLSConnection",
    "describe",
]

#: Close reasons of connections ended by a fault.
STALLED: Final = "stalled"
RESET_INJECTED: Final = "reset-injected"

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


class _Halted(ConnectionError):
    """Ends a connection halted by a fault.  A :exc:`ConnectionError`, so that
    :meth:`Connection.serve` hands it to :meth:`FaultInjector._broken`, which
    turns it into its close reason; the transport is then closed as usual."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FaultInjector(Connection):
    """The send side of a connection, with faults.  A mixin: put it before
    :class:`SocketConnection` or :class:`StreamConnection` in the bases, and
    call :meth:`_init_faults` from ``__init__``.  It has a ``__dict__``
    (the connection classes use slots): faulty connections are few.

    Latency and pacing delays happen while the connection is busy echoing, so
    a graceful stop lets them finish (within the server's grace), and the idle
    timeout counts from the end of each delay, never during it.  A stall
    waits like an idle connection: a stop ends it at once, the idle timeout
    ends it with a clean close.  A reset first waits until the kernel has
    transmitted every byte written, so the client reads exactly the bytes
    before the count, then the reset.
    """

    def _init_faults(self, faults: Faults, *, seed: int | None, events: Counter[str]) -> None:
        self._faults = faults
        self._plan = FaultPlan(faults, seed=seed)
        # Per connection (for the log line) and per server (for the statistics).
        self.fault_events: Counter[str] = Counter()
        self._server_events = events
        self._paced_until = -float("inf")

    def _count(self, event: str) -> None:
        self.fault_events[event] += 1
        self._server_events[event] += 1

    # ---- transport hooks, implemented by the transport-specific classes ----

    async def _wait_transmitted(self) -> None:
        """Wait until the kernel has transmitted what was written (best effort)."""
        raise NotImplementedError

    def _abort(self) -> None:
        """Make the coming close send a TCP reset rather than a FIN."""
        raise NotImplementedError

    # ---- the send side ----

    def _send_now(self, data: Data) -> int:
        # Nothing goes out without the faults: the loop then calls _send_all.
        return 0

    async def _send_all(self, data: Data) -> None:
        plan = self._plan
        # Every fault may block, and SocketConnection's receive buffer is shared
        # by the whole server: copy the echo out before anything else runs.
        echo = memoryview(bytes(data))
        delay = plan.delay()
        if delay:
            self._count(LATENCY)
            await self._sleep(delay)
        allowed = plan.allow(len(echo))
        if self._faults.fragment is None and self._faults.bandwidth is None:
            if allowed:
                await super()._send_all(echo[:allowed])
        else:
            await self._send_pieces(echo[:allowed])
        if plan.halted:
            # The loop counts an echo once it is sent; the halt never returns
            # there, so count what went out here.
            self.bytes_out += allowed
            if allowed == len(echo):
                self.rounds = self._protocol.rounds
            await self._halt()

    async def _send_pieces(self, echo: memoryview) -> None:
        piece_size = self._plan.piece_size
        assert piece_size is not None
        fragment_delay = self._faults.fragment_delay
        bandwidth = self._faults.bandwidth
        send = super()._send_all
        for start in range(0, len(echo), piece_size):
            piece = echo[start : start + piece_size]
            if start and fragment_delay:
                await self._sleep(fragment_delay)
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

    async def _sleep(self, seconds: float) -> None:
        await self._sleep_until(trio.current_time() + seconds)

    async def _sleep_until(self, deadline: float) -> None:
        # An injected delay is the server's doing, not the client's idleness:
        # the idle timeout counts from its end.
        idle = self._config.idle_timeout
        if idle is not None and deadline + idle > self._deadline:
            self._move_idle_deadline(deadline + idle)
        await trio.sleep_until(deadline)

    # ---- the halt ----

    async def _start(self) -> str | None:
        early = await super()._start()  # the TLS handshake, if any
        if early is not None or not self._plan.halted:
            return early
        # A count of 0: halt before the first echo.
        try:
            await self._halt()
        except _Halted as halted:
            return halted.reason

    async def _halt(self) -> NoReturn:
        """Stall or reset, now that the count is reached; raise :exc:`_Halted`."""
        reason = self._plan.halt_reason
        assert reason is not None
        if reason == STALLED:
            self._count(STALL)
            await self._wait_while_halted(trio.sleep_forever)
            await self._half_close_and_drain()
        else:
            self._count(RESET)
            await self._wait_while_halted(self._wait_transmitted)
            self._abort()
        raise _Halted(reason)

    async def _wait_while_halted(self, wait_for: Callable[[], Awaitable[None]]) -> None:
        """Run *wait_for* until done, the idle timeout, or a stop, whichever is first."""
        idle = self._config.idle_timeout
        deadline = trio.current_time() + idle if idle is not None else math.inf
        # The echo loop's idle scope must not end the halt as "idle": a scope of
        # its own times it, and stop() cancels it at once, as a waiting receive.
        self._move_idle_deadline(math.inf)
        self._scope = trio.CancelScope(deadline=deadline)
        self._deadline = deadline
        if self._stopping:
            return
        self._receiving = True
        try:
            with self._scope:
                await wait_for()
        finally:
            self._receiving = False

    def _broken(self, exc: trio.BrokenResourceError | ConnectionError) -> str:
        if isinstance(exc, _Halted):
            return exc.reason
        return super()._broken(exc)


class FaultySocketConnection(FaultInjector, SocketConnection):
    """A :class:`SocketConnection` with faults."""

    def __init__(
        self,
        sock: socket.socket,
        config: ConnectionConfig,
        *,
        peer: str,
        buffer: memoryview,
        on_close: Callable[[Connection], None] | None = None,
        seed: int | None,
        events: Counter[str],
    ) -> None:
        super().__init__(sock, config, peer=peer, buffer=buffer, on_close=on_close)
        self._init_faults(config.faults, seed=seed, events=events)

    async def _wait_transmitted(self) -> None:
        await _wait_transmitted(self._sock)

    def _abort(self) -> None:
        _linger_zero(self._sock)


class FaultyStreamConnection(FaultInjector, StreamConnection):
    """A :class:`StreamConnection` with faults.  A reset needs a socket under
    the stream (found through ``transport_stream``); without one, as over
    memory streams, the connection is just closed at once."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        config: ConnectionConfig,
        *,
        peer: str,
        on_close: Callable[[Connection], None] | None = None,
        seed: int | None,
        events: Counter[str],
    ) -> None:
        super().__init__(stream, config, peer=peer, on_close=on_close)
        self._init_faults(config.faults, seed=seed, events=events)

    async def _wait_transmitted(self) -> None:
        sock = _socket_under(self._stream)
        if sock is None:
            await trio.lowlevel.checkpoint()
        else:
            await _wait_transmitted(sock)

    def _abort(self) -> None:
        sock = _socket_under(self._stream)
        if sock is not None:
            _linger_zero(sock)


class FaultyTLSConnection(FaultInjector, TLSConnection):
    """A :class:`TLSConnection` with faults, acting on the plaintext echo.
    Counts of ``0`` act right after the handshake."""

    def __init__(
        self,
        stream: trio.SocketStream,
        context: ssl.SSLContext,
        config: ConnectionConfig,
        *,
        peer: str,
        handshake_timeout: float,
        on_close: Callable[[Connection], None] | None = None,
        received: bytes = b"",
        seed: int | None,
        events: Counter[str],
    ) -> None:
        super().__init__(
            stream,
            context,
            config,
            peer=peer,
            handshake_timeout=handshake_timeout,
            on_close=on_close,
            received=received,
        )
        self._raw_socket = stream.socket
        self._init_faults(config.faults, seed=seed, events=events)

    async def _wait_transmitted(self) -> None:
        await _wait_transmitted(self._raw_socket)

    def _abort(self) -> None:
        _linger_zero(self._raw_socket)


def _socket_under(stream: object) -> trio.socket.SocketType | None:
    while not isinstance(stream, trio.SocketStream):
        stream = getattr(stream, "transport_stream", None)
        if stream is None:
            return None
    return stream.socket


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
    if faults.jitter:
        parts.append(f"seed={seed}")
    return " ".join(parts)
