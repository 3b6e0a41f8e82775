"""Shutdown signals: the first SIGINT or SIGTERM asks for a graceful stop, a second for a hard one.

Once the stop is done, later signals change nothing (the process exits 0).

Used by both the single server process and the ``--workers`` supervisor, so
the two react to signals the same way.  Open the receiver with
:func:`shutdown_signals` *before* starting what the signals stop (a signal
that arrives meanwhile is queued, not lost to the default handler), then run
:func:`dispatch_signals` once there is something to stop.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final

import trio

__all__ = ["SHUTDOWN_SIGNALS", "dispatch_signals", "shutdown_signals"]

SHUTDOWN_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def shutdown_signals() -> Iterator[AsyncIterator[int]]:
    """Catch SIGINT and SIGTERM while in the block; yield the signals received.

    After the block, and until the process exits, SIGINT and SIGTERM are
    ignored: the shutdown they would ask for has happened, and the default
    actions (death by the signal, a ``KeyboardInterrupt`` in the middle of
    the last log line or of ``logging.shutdown`` at exit) would turn a clean
    exit 0 into a failure or a traceback.  A signal that arrives in the
    instant before trio's receiver is installed is not lost either: it is
    held, then replayed into the receiver.

    Must be entered from trio's main thread (:func:`trio.open_signal_receiver`).
    The handlers are not restored afterwards: meant for a process's top level.
    """
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, hold)
    # trio.open_signal_receiver restores the handlers it found -- hold -- on exit.
    try:
        with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
            for early in held:
                signal.raise_signal(early)
            held.clear()
            yield signals
    finally:
        # Ignored, not held: at exit the interpreter resets every signal with a
        # Python handler to its default action (death), but leaves SIG_IGN alone.
        for signum in SHUTDOWN_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


async def dispatch_signals(
    signals: AsyncIterator[int],
    *,
    graceful: Callable[[signal.Signals], None],
    immediate: Callable[[signal.Signals], None],
) -> None:
    """Call *graceful* for the first signal received, *immediate* for every later one.

    Runs until cancelled; the callbacks run synchronously in this task, and an
    exception from one propagates.
    """
    received = 0
    async for signum in signals:
        received += 1
        (graceful if received == 1 else immediate)(signal.Signals(signum))
