"""Shutdown signals: the first SIGINT or SIGTERM asks for a graceful stop, a second for a hard one.

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

    Must be entered from trio's main thread (:func:`trio.open_signal_receiver`).
    """
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        yield signals


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
