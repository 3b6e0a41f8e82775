"""What one connection does in each mode, once it is connected.

The closed loop over a plain socket (:func:`closed_loop_socket`) is the hot
path and uses the server's tricks (:mod:`trio_echo._transports`): a
non-blocking socket driven directly, ``recv_into`` a preallocated buffer, no
coroutine per operation, and after a send a plain checkpoint (the other
connections run meanwhile, and the echo is usually there by then) before
falling back to ``wait_readable``.  Everything else -- TLS, open loop, ping --
goes through :func:`paced_stream`, a sender and a receiver task over any
:class:`trio.abc.Stream`.

Errors: :exc:`~.pattern.EchoMismatch` at a wrong or extra byte,
:exc:`ServerClosed` when the server closes with echoes outstanding, and the
transport's own errors (:exc:`OSError`, :exc:`trio.BrokenResourceError`)
otherwise.  Cancellation (stop, timeout) ends a loop anywhere.
"""

from __future__ import annotations

import math
import socket
from collections import deque
from collections.abc import Callable

import trio

from .meter import Meter
from .pattern import MAX_CHUNK, Verifier

__all__ = ["Progress", "ServerClosed", "closed_loop_socket", "finish", "paced_stream"]

#: After the last echo: how long the server may take to close after our EOF.
FINISH_TIMEOUT = 2.0


class ServerClosed(Exception):
    """The server closed the connection with echoes outstanding (one line)."""


class Progress:
    """When a connection last received something: the run's watchdog reads it."""

    __slots__ = ("at",)

    def __init__(self, at: int) -> None:
        self.at = at


def _closed(verifier: Verifier) -> ServerClosed:
    return ServerClosed(
        f"connection {verifier.connection}: closed by the server at byte {verifier.received} "
        f"with {verifier.outstanding} bytes of echo outstanding"
    )


async def _wait_readable_or_writable(sock: socket.socket) -> None:
    """Return once *sock* is readable or writable (a large message being sent
    while its echo comes back: waiting for one alone could deadlock)."""
    async with trio.open_nursery() as nursery:

        async def wait(waiter: Callable[[socket.socket], object]) -> None:
            await waiter(sock)  # type: ignore[misc]
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, trio.lowlevel.wait_readable)
        nursery.start_soon(wait, trio.lowlevel.wait_writable)


async def closed_loop_socket(
    sock: socket.socket, verifier: Verifier, meter: Meter, progress: Progress, *, pipeline: int
) -> None:
    """Keep *pipeline* messages in flight on *sock* (non-blocking) until the
    run stops or its budget is spent, then wait for the last echoes."""
    buffer = bytearray(MAX_CHUNK)
    view = memoryview(buffer)
    clock = meter.clock
    record = meter.histogram.record
    check = verifier.check
    size = verifier.next_message().nbytes
    verifier.sent -= size  # that was only to learn the size
    sent_at: deque[int] = deque()
    queue: deque[memoryview] = deque()
    out = memoryview(b"")
    for _ in range(pipeline):
        now = clock()
        if not meter.take(now):
            break
        sent_at.append(now)
        queue.append(verifier.next_message())
    if queue:
        out = queue.popleft()
    partial = 0  # bytes received of the oldest message in flight
    yielded = False
    while True:
        while out:
            try:
                out = out[sock.send(out) :]
            except BlockingIOError:
                break
            if not out and queue:
                out = queue.popleft()
        if not sent_at:
            return
        try:
            n = sock.recv_into(buffer)
        except BlockingIOError:
            if out:
                await _wait_readable_or_writable(sock)
            elif yielded:
                await trio.lowlevel.wait_readable(sock)
                yielded = False
            else:
                # Let the other connections run: the echo is usually back by
                # then, and reading it costs no epoll_ctl() nor I/O wake-up.
                await trio.lowlevel.checkpoint()
                yielded = True
            continue
        if not n:
            raise _closed(verifier)
        check(view[:n])
        partial += n
        if partial < size:
            continue
        now = clock()
        progress.at = now
        while partial >= size:
            partial -= size
            started = sent_at.popleft()
            if started >= meter.measure_from:
                record(now - started)
                meter.round_trips += 1
                meter.bytes += size
                meter.last = now
            if meter.take(now):
                sent_at.append(now)
                if out:
                    queue.append(verifier.next_message())
                else:
                    out = verifier.next_message()


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
    size = len(verifier.next_message())
    verifier.sent -= size
    clock = meter.clock
    sent_at: deque[int] = deque()
    permits = trio.Semaphore(in_flight or 1)
    sending_done = False

    async def send() -> None:
        nonlocal sending_done
        due = first
        while True:
            if in_flight is not None:
                await permits.acquire()
            if period is not None:
                await trio.sleep(max(0, due - clock()) / 1e9)
                # Open loop counts from the due time; ping from the send.
                start = due if in_flight is None else clock()
                due += period
                # Ping keeps its schedule but never sends two at once.
                if in_flight is not None and clock() > due:
                    due = first + period * math.ceil((clock() - first) / period)
            else:
                start = clock()
            if not meter.take(start):
                break
            if not sent_at:
                progress.at = clock()  # the watchdog counts from now, not the last echo
            sent_at.append(start)
            await stream.send_all(verifier.next_message())
        sending_done = True
        if not sent_at:
            nursery.cancel_scope.cancel()

    async def receive() -> None:
        partial = 0
        while True:
            data = await stream.receive_some(MAX_CHUNK)
            if not data:
                raise _closed(verifier)
            verifier.check(data)
            partial += len(data)
            now = clock()
            progress.at = now
            while partial >= size:
                partial -= size
                started = sent_at.popleft()
                if started >= meter.measure_from:
                    meter.histogram.record(now - started)
                    meter.round_trips += 1
                    meter.bytes += size
                    meter.last = now
                    if meter.on_round_trip is not None:
                        meter.on_round_trip(meter.round_trips, now - started)
                if in_flight is not None:
                    permits.release()
            if sending_done and not sent_at:
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)


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
