"""What one connection does once connected, in every mode but the plain closed loop.

:func:`paced_stream` drives any :class:`trio.abc.Stream` (TLS, or a plain
socket in open-loop and ping mode) with a sender and a receiver task.  The
closed loop over plain sockets, the hot path, is :mod:`.multiplex`.

Errors: :exc:`~.pattern.EchoMismatch` at a wrong or extra byte,
:exc:`ServerClosed` when the server closes with echoes outstanding, and the
transport's own errors (:exc:`OSError`, :exc:`trio.BrokenResourceError`)
otherwise.  Cancellation (stop, timeout) ends a loop anywhere.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from .connect import causes
from .meter import Clock, Meter
from .pattern import MAX_CHUNK, Verifier

__all__ = [
    "Pace",
    "Progress",
    "ServerClosed",
    "closed_error",
    "finish",
    "next_send",
    "paced_stream",
    "side_by_side",
    "sleep_until",
]

#: After the last echo: how long the server may take to close after our EOF.
FINISH_TIMEOUT = 2.0
#: Paced sends stop sleeping this long (ns) before they are due, and yield
#: until then: one epoll timeout tick (1 ms) plus a margin.
SPIN_BEFORE_DUE = 1_200_000


class ServerClosed(Exception):
    """The server closed the connection with echoes outstanding (one line)."""


class Progress:
    """When a connection last received something: the run's watchdog reads it."""

    __slots__ = ("at",)

    def __init__(self, at: int) -> None:
        self.at = at


def closed_error(verifier: Verifier) -> ServerClosed:
    """The error for a server that closed with *verifier*'s echoes outstanding."""
    return ServerClosed(
        f"connection {verifier.connection}: closed by the server at byte {verifier.received} "
        f"with {verifier.outstanding} bytes of echo outstanding"
    )


async def side_by_side(*tasks: Callable[[trio.CancelScope], Awaitable[None]]) -> None:
    """Run *tasks* concurrently until every one returns; each is given the
    cancel scope of them all, to end the lot when its work is done.

    The first exception a task raises cancels the others and is then raised
    itself, not wrapped in an exception group: a connection's callers tell a
    mismatch from a reset by its type.  Cancellation from outside passes
    through as usual.
    """
    failures: list[Exception] = []

    async def guarded(task: Callable[[trio.CancelScope], Awaitable[None]]) -> None:
        try:
            await task(nursery.cancel_scope)
        except Exception as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(guarded, task)
    if failures:
        raise failures[0]


async def sleep_until(due: int, clock: Clock) -> None:
    """Return at clock reading *due* (ns), or at once if it has passed.

    trio sleeps on epoll's millisecond timeouts, so a message would leave up
    to a millisecond late, and open-loop latency (counted from the due time)
    would carry the client's own lateness.  With the real clock, sleep until
    :data:`SPIN_BEFORE_DUE` before and then yield in a loop until due; with
    any other clock (trio's virtual one in tests) simply sleep.
    """
    if clock is not time.perf_counter_ns:
        await trio.sleep(max(0, due - clock()) / 1e9)
        return
    early = due - clock() - SPIN_BEFORE_DUE
    if early > 0:
        await trio.sleep(early / 1e9)
    while clock() < due:
        await trio.lowlevel.checkpoint()


class Pace:
    """The send times of a paced sender: one message due every *period* ns
    from *first* (a clock reading).

    Open loop: a message's latency counts from its due time, and a sender
    that fell behind sends what it owes at once.  Ping (not *open_loop*): from
    the send itself, and a sender that fell behind skips to the next due time
    rather than send two at once.
    """

    def __init__(self, first: int, period: int, *, open_loop: bool) -> None:
        self.first = first
        self.period = period
        self.open_loop = open_loop
        #: When the next message is due.
        self.due = first

    async def next(self, clock: Clock) -> int:
        """Wait until the next message is due; return the time its latency counts from."""
        await sleep_until(self.due, clock)
        start = self.due if self.open_loop else clock()
        self.due += self.period
        if not self.open_loop and clock() > self.due:
            first, period = self.first, self.period
            self.due = first + period * math.ceil((clock() - first) / period)
        return start


async def next_send(meter: Meter, pace: Pace | None, permits: trio.Semaphore | None) -> int | None:
    """Wait for a free slot among *permits* (none: no limit) and for *pace*'s
    due time (none: at once); return the time the message's latency counts
    from, or ``None`` when the run may send no more (stopped, budget spent)."""
    if permits is not None:
        await permits.acquire()
    start = meter.clock() if pace is None else await pace.next(meter.clock)
    return start if meter.take(start) else None


async def paced_stream(
    stream: trio.abc.Stream,
    verifier: Verifier,
    meter: Meter,
    progress: Progress,
    *,
    in_flight: int | None,
    period: int | None,
    first: int = 0,
) -> None:
    """Send messages over *stream* and verify their echoes until the run stops
    or its budget is spent, then wait for the last echoes.

    At most *in_flight* messages are outstanding (``None``: no limit).  With
    a *period*, a message is due every *period* ns from *first* (a clock
    reading) and is sent then, or as soon as *in_flight* allows (ping:
    ``in_flight=1``); its latency counts from the time it was due, so a
    stalled server cannot hide behind the client's own waiting (open loop:
    ``in_flight=None``).  Without, messages go as soon as *in_flight* allows
    (closed loop).
    """
    size = verifier.size
    clock = meter.clock
    sent_at: deque[int] = deque()
    permits = None if in_flight is None else trio.Semaphore(in_flight)
    pace = None if period is None else Pace(first, period, open_loop=in_flight is None)
    sending_done = False
    reset: trio.BrokenResourceError | None = None

    async def send(pair: trio.CancelScope) -> None:
        nonlocal sending_done, reset
        while (start := await next_send(meter, pace, permits)) is not None:
            if not sent_at:
                progress.at = clock()  # the watchdog counts from now, not the last echo
            sent_at.append(start)
            try:
                await stream.send_all(verifier.next_message())
            except trio.BrokenResourceError as exc:
                # Closed or reset by the server: the receiver says which, from
                # what it reads next (the last echoes, then EOF or the reset).
                # A close that our own next send turned into a reset fails
                # this send with EPIPE and still reads as closed; a reset this
                # send reported first reads as EOF there, so it is passed on.
                if any(isinstance(cause, ConnectionResetError) for cause in causes(exc)):
                    reset = exc
                break
        sending_done = True
        if not sent_at:
            pair.cancel()

    async def receive(pair: trio.CancelScope) -> None:
        while True:
            data = await stream.receive_some(MAX_CHUNK)
            if not data:
                raise closed_error(verifier) if reset is None else reset
            completed = verifier.check(data)
            now = clock()
            progress.at = now
            for _ in range(completed):
                meter.round_trip(sent_at.popleft(), now, size)
                if permits is not None:
                    permits.release()
            if sending_done and not sent_at:
                pair.cancel()

    await side_by_side(send, receive)


async def finish(stream: trio.abc.Stream, verifier: Verifier) -> None:
    """End a connection whose echoes are all back: half-close, then read until
    the server closes (at most :data:`FINISH_TIMEOUT`), every byte an extra
    one.  A stream that cannot half-close (TLS) is closed outright."""
    with trio.move_on_after(FINISH_TIMEOUT):
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
            while data := await stream.receive_some(MAX_CHUNK):
                verifier.check(data)
        await stream.aclose()
