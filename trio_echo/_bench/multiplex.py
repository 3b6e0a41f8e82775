"""The closed loop over plain sockets: every connection in one task, one epoll.

The hot path of ``trio-echo bench``.  A task per connection pays trio's
scheduler and an ``epoll_ctl`` for nearly every round trip; here all the
connections' sockets sit in one private, level-triggered epoll set, and the
task waits on that set's descriptor with ``trio.lowlevel.wait_readable`` only
when no socket is ready: one trio wait per batch of echoes, not per echo (and
before that, a short bounded spin of empty polls, then one checkpoint).
Each batch runs in two phases.  First every ready socket gets one
``recv_into`` a shared, preallocated buffer, its bytes verified with one
``bytes.startswith`` (a memcmp) and its completed round trips timed (the
batch's latencies go into the histogram in one call).  Then the connections
owed a message get it, one send after the other, each timed as it leaves,
from the shared pattern's ready-made messages.  Sending in a burst matters
on loopback, where the sender pays for waking the server: a server asleep
between messages is woken about once per burst instead of once per message.

A connection that fails (closed or reset by the server, no echo within the
timeout) is counted through ``on_error`` and dropped; the others go on.  A
wrong, missing or extra byte raises :exc:`~.pattern.EchoMismatch`, which ends
the whole loop.  Once a connection may send no more (stop or count reached)
and its echoes are back, it half-closes and waits (at most
:data:`~.loops.FINISH_TIMEOUT`) for the server to close, any byte then an
extra one.  Cancellation closes nothing: the caller owns the sockets.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import trio

from .connect import error_kind
from .loops import FINISH_TIMEOUT, closed_error
from .meter import Meter
from .pattern import MAX_CHUNK, Verifier

__all__ = ["closed_loop_multiplexed"]

# How often, at most, connections are checked for an echo overdue.
CHECK_EVERY: Final = 0.25
# Empty polls (about 0.5 µs each) before yielding to trio and then sleeping:
# with few connections the next echo is usually back within that time.
SPIN_POLLS: Final = 100

_IN: Final = select.EPOLLIN
_IN_OUT: Final = select.EPOLLIN | select.EPOLLOUT
_READABLE: Final = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP

OnError = Callable[[str, str], None]


class _Connection:
    __slots__ = (
        "check",
        "finish_by",
        "next_message",
        "out",
        "progress",
        "queue",
        "recv_into",
        "send",
        "sent_at",
        "sock",
        "verifier",
        "writing",
    )

    def __init__(self, sock: socket.socket, verifier: Verifier, now: int) -> None:
        self.sock = sock
        self.verifier = verifier
        # Bound once: the loop calls these for every echo.
        self.recv_into = sock.recv_into
        self.send = sock.send
        self.check = verifier.check
        self.next_message = verifier.next_message
        self.sent_at: deque[int] = deque()
        self.queue: deque[bytes | memoryview] = deque()
        self.out = memoryview(b"")
        self.progress = now
        #: Half-closed, waiting for the server's close until this time (0: not yet).
        self.finish_by = 0
        #: Registered for EPOLLOUT too (a message only partly sent).
        self.writing = False


async def closed_loop_multiplexed(
    connections: Sequence[tuple[socket.socket, Verifier]],
    meter: Meter,
    *,
    pipeline: int,
    echo_timeout: float,
    on_error: OnError,
) -> None:
    """Keep *pipeline* messages in flight on each of *connections* (connected,
    non-blocking sockets) until the run stops or its budget is spent; then
    finish each one.  Returns when every connection has ended."""
    clock = meter.clock
    take = meter.take
    allow = meter.allow
    measured = meter.measured
    buffer = bytearray(MAX_CHUNK)
    view = memoryview(buffer)
    timeout = echo_timeout
    timeout_ns = round(timeout * 1e9)
    finish_ns = round(FINISH_TIMEOUT * 1e9)
    check_ns = round(CHECK_EVERY * 1e9)
    by_fd: dict[int, _Connection] = {}
    poller = select.epoll()
    size = connections[0][1].size if connections else 0
    # Latencies of one batch of echoes, recorded together after it, and the
    # connections owed a message (one entry per message).
    latencies: list[int] = []
    owed: list[_Connection] = []
    try:
        now = clock()
        for sock, verifier in connections:
            conn = by_fd[sock.fileno()] = _Connection(sock, verifier, now)
            poller.register(sock.fileno(), _IN)
            for _ in range(pipeline):
                if not take(now):
                    break
                conn.sent_at.append(now)
                conn.queue.append(verifier.next_message())
            if not conn.queue:
                _start_finish(conn, now, finish_ns)
            else:
                conn.out = memoryview(conn.queue.popleft())
                _flush(conn, poller)
        next_check = clock() + check_ns
        yielded = False
        spins = 0
        while by_fd:
            events = poller.poll(0)
            if not events:
                if spins < SPIN_POLLS:
                    # An echo on loopback takes tens of µs: polling for it
                    # costs less than sleeping and waking through trio.
                    spins += 1
                    continue
                now = clock()
                if now >= next_check:
                    next_check = now + check_ns
                    _check_overdue(by_fd, poller, now, timeout_ns, timeout, on_error)
                    continue
                if not yielded:
                    # Let trio run other tasks; the echoes are often back by then.
                    await trio.lowlevel.checkpoint()
                    yielded = True
                    continue
                with trio.move_on_after(CHECK_EVERY):
                    await trio.lowlevel.wait_readable(poller.fileno())
                yielded = False
                continue
            yielded = False
            spins = 0
            now = clock()
            measure_from = meter.measure_from
            for fd, event in events:
                conn = by_fd[fd]
                if event != _IN:
                    if event & select.EPOLLOUT and conn.out:
                        _flush(conn, poller)
                    if not event & _READABLE:
                        continue
                try:
                    n = conn.recv_into(buffer)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    _drop(conn, by_fd, poller)
                    number = conn.verifier.connection
                    on_error(error_kind(exc), f"connection {number}: {exc.strerror}")
                    continue
                verifier = conn.verifier
                if not n:
                    _drop(conn, by_fd, poller)
                    if verifier.outstanding:
                        error = closed_error(verifier)
                        on_error("closed", str(error))
                    continue
                completed = conn.check(view[:n])
                if conn.finish_by:
                    continue
                conn.progress = now
                while completed:
                    completed -= 1
                    started = conn.sent_at.popleft()
                    if started >= measure_from:
                        latencies.append(now - started)
                    owed.append(conn)
            if owed:
                # The next messages go out together, once every echo of the
                # batch is in (see the module's docstring).
                granted = allow(now, len(owed))
                for conn in owed[:granted]:
                    # Timed one by one: a burst of sends takes microseconds each.
                    conn.sent_at.append(clock())
                    message = conn.next_message()
                    if conn.out:
                        conn.queue.append(message)
                        continue
                    # Nearly always the socket takes the whole message at once.
                    try:
                        sent = conn.send(message)
                    except OSError:
                        sent = 0  # _flush sorts it out
                    if sent < size:
                        conn.out = memoryview(message)[sent:]
                        _flush(conn, poller)
                for conn in owed[granted:]:
                    if not conn.sent_at and not conn.finish_by:
                        _start_finish(conn, now, finish_ns)
                owed.clear()
            if latencies:
                measured(latencies, now, size)
                latencies.clear()
            if now >= next_check:
                next_check = now + check_ns
                # Finished connections whose server never closes: let them go.
                _check_overdue(by_fd, poller, now, timeout_ns, timeout, on_error)
                # A loop never idle still lets trio run the progress line and
                # deliver Ctrl-C, four times a second.
                await trio.lowlevel.checkpoint()
    finally:
        poller.close()


def _flush(conn: _Connection, poller: select.epoll) -> None:
    """Send what the connection has queued until the socket takes no more."""
    try:
        while conn.out:
            sent = conn.sock.send(conn.out)
            conn.out = conn.out[sent:]
            if not conn.out and conn.queue:
                conn.out = memoryview(conn.queue.popleft())
    except BlockingIOError:
        pass
    except OSError:
        # The receive side reports it (reset, closed) with the bytes still due.
        conn.out = memoryview(b"")
        conn.queue.clear()
    if bool(conn.out) != conn.writing:
        conn.writing = bool(conn.out)
        poller.modify(conn.sock.fileno(), _IN_OUT if conn.writing else _IN)


def _start_finish(conn: _Connection, now: int, finish_ns: int) -> None:
    conn.finish_by = now + finish_ns
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_WR)


def _drop(conn: _Connection, by_fd: dict[int, _Connection], poller: select.epoll) -> None:
    fd = conn.sock.fileno()
    poller.unregister(fd)
    del by_fd[fd]
    trio.lowlevel.notify_closing(conn.sock)
    conn.sock.close()


def _check_overdue(
    by_fd: dict[int, _Connection],
    poller: select.epoll,
    now: int,
    timeout_ns: int,
    timeout: float,
    on_error: OnError,
) -> None:
    for conn in list(by_fd.values()):
        if conn.finish_by:
            if now >= conn.finish_by:
                _drop(conn, by_fd, poller)
        elif now - conn.progress > timeout_ns:
            _drop(conn, by_fd, poller)
            number = conn.verifier.connection
            on_error("timeout", f"connection {number}: no echo within {timeout:g} s")
