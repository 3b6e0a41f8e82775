"""Worker liveness for ``--workers``: heartbeats over a pipe, and the supervisor's watch on them.

A worker whose trio loop is stopped (SIGSTOP, a long synchronous call, a
deadlock) keeps its listening socket, so the kernel keeps handing it new
clients, who then wait in its backlog for nothing.  Each worker therefore
writes one byte to a pipe from a task in its trio loop every
:data:`HEARTBEAT_INTERVAL` seconds (:func:`send_heartbeats`); the supervisor
reads the other end (:func:`wait_silent`) and kills a worker that has been
silent for ``--worker-timeout`` seconds, which the usual restart then
replaces (as gunicorn's ``--timeout`` does).  Before its first heartbeat a
worker gets at least :data:`STARTUP_ALLOWANCE` seconds: importing Python and
trio on a loaded machine can take seconds, and a short timeout must not turn
start-up into a restart loop; a worker stuck while starting is still caught.
"""

from __future__ import annotations

import errno
import os
from typing import Final

import trio

__all__ = ["HEARTBEAT_INTERVAL", "STARTUP_ALLOWANCE", "beat", "send_heartbeats", "wait_silent"]

#: Seconds between two heartbeats: twice a second, so that one beat delayed
#: by a busy loop never makes a worker look silent for a whole second.
HEARTBEAT_INTERVAL: Final = 0.5

#: Seconds a worker has, at least, from its start to its first heartbeat.
STARTUP_ALLOWANCE: Final = 30.0

_BEAT: Final = b"."


def beat(fd: int) -> bool:
    """Write one heartbeat to pipe *fd*, now; ``False`` if the supervisor has
    closed its end (it is gone; ``PR_SET_PDEATHSIG`` stops this worker).

    A full pipe (a supervisor that reads slowly) just skips a beat: the pipe
    holds thousands.
    """
    os.set_blocking(fd, False)
    try:
        os.write(fd, _BEAT)
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return False
        raise
    return True


async def send_heartbeats(fd: int) -> None:
    """:func:`beat` every :data:`HEARTBEAT_INTERVAL` seconds, the first at once.

    Runs until cancelled, or returns once the supervisor is gone.
    """
    while True:
        if not beat(fd):
            return
        await trio.sleep(HEARTBEAT_INTERVAL)


async def wait_silent(fd: int, silence: float, *, first: float | None = None) -> None:
    """Return once nothing has arrived on pipe *fd* for *silence* seconds
    (*first* seconds, if given, before anything has arrived at all).

    Every read resets the clock.  If the writer closes its end (the worker
    exited), waits until cancelled: the worker's exit is the caller's to see.
    """
    os.set_blocking(fd, False)
    wait = silence if first is None else first
    while True:
        with trio.move_on_after(wait) as scope:
            await trio.lowlevel.wait_readable(fd)
        if scope.cancelled_caught:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            continue
        wait = silence
        if not data:
            await trio.sleep_forever()
