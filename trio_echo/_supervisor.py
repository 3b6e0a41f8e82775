"""``--workers N``: a parent process that keeps N worker processes running.

Each worker is the ``trio-echo`` command itself, serving on listening sockets
the parent created (``SO_REUSEPORT``, one per worker) or inherited, passed as
``--fd``.  The parent keeps its copies open while it runs, so a worker that
dies loses only its accepted connections: clients still in its listen backlog
wait there for its replacement.

The parent forwards SIGINT and SIGTERM; on the first it stops restarting,
closes its copies of the listening sockets and waits for the workers'
graceful shutdown; a second signal is forwarded too (workers then stop at
once).  Workers run in their own process group, so a terminal's Ctrl-C reaches
them only through the parent (once, not twice), and each asks the kernel to
send it SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), so even a parent
killed with SIGKILL leaves no orphan behind.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import trio

from ._signals import dispatch_signals, shutdown_signals

__all__ = ["Supervisor", "WorkerSpec", "die_with_parent"]

LOGGER = logging.getLogger("trio_echo")

#: Restart back-off: the first restart waits BACKOFF_MIN seconds, each further
#: quick death doubles it, up to BACKOFF_MAX; a worker that ran RESET_AFTER
#: seconds counts as healthy again.
BACKOFF_MIN: Final = 0.5
BACKOFF_MAX: Final = 30.0
RESET_AFTER: Final = 30.0

#: After the grace period, how long workers may still take to exit before the
#: parent kills them (interpreter teardown, a last log line).
STOP_MARGIN: Final = 5.0

PR_SET_PDEATHSIG: Final = 1


@attrs.frozen(kw_only=True)
class WorkerSpec:
    """How to start one worker: its command line and the descriptors it inherits."""

    number: int
    command: tuple[str, ...]
    pass_fds: tuple[int, ...]


class Supervisor:
    """Start the workers, restart those that die, stop them all on a signal.

    :meth:`run` returns the exit status: ``0`` when every worker exited 0
    after the shutdown, ``1`` otherwise (a worker failed, or had to be killed).
    """

    def __init__(
        self,
        workers: Sequence[WorkerSpec],
        *,
        grace: float,
        sockets: Sequence[socket.socket],
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self._workers = tuple(workers)
        self._grace = grace
        self._sockets = tuple(sockets)
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._clean = True
        self._stop = trio.Event()
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        # Called with a worker's number each time it exits (--metrics: not ready).
        self._on_exit = on_exit

    @property
    def stopping(self) -> bool:
        """Whether a shutdown has started (``/readyz`` answers 503 from then on)."""
        return self._stopping

    async def run(self) -> int:
        """Supervise until the workers have stopped after a signal; return the exit status."""
        with shutdown_signals() as signals:
            async with trio.open_nursery() as nursery:

                def graceful(signum: signal.Signals) -> None:
                    LOGGER.info(
                        "%s received: stopping %d workers", signum.name, len(self._running)
                    )
                    self._stopping = True
                    self._stop.set()
                    self._close_sockets()
                    nursery.start_soon(self._kill_after, self._grace + STOP_MARGIN)
                    self._signal_all(signum)

                def immediate(signum: signal.Signals) -> None:
                    LOGGER.warning("%s received again: workers stop now", signum.name)
                    self._signal_all(signum)

                watch = functools.partial(dispatch_signals, graceful=graceful, immediate=immediate)
                nursery.start_soon(watch, signals)
                async with trio.open_nursery() as workers:
                    for spec in self._workers:
                        workers.start_soon(self._keep_running, spec)
                nursery.cancel_scope.cancel()
        self._close_sockets()
        LOGGER.info("stopped: all %d workers exited", len(self._workers))
        return 0 if self._clean else 1

    async def _keep_running(self, spec: WorkerSpec) -> None:
        failures = 0
        while not self._stopping:
            started = trio.current_time()
            status = await self._run_worker(spec)
            if self._on_exit is not None:
                self._on_exit(spec.number)
            if self._stopping:
                # A forwarded signal that arrives while the worker starts up or tears
                # down (its handlers not installed) ends it by default: still a stop.
                if status not in (0, -signal.SIGINT, -signal.SIGTERM):
                    self._clean = False
                    LOGGER.warning("worker %d %s during shutdown", spec.number, _how(status))
                return
            failures = 1 if trio.current_time() - started >= RESET_AFTER else failures + 1
            delay = min(BACKOFF_MIN * 2 ** (failures - 1), BACKOFF_MAX)
            LOGGER.warning(
                "worker %d %s unexpectedly; restarting in %.1f s", spec.number, _how(status), delay
            )
            with trio.move_on_after(delay):
                await self._stop.wait()

    async def _run_worker(self, spec: WorkerSpec) -> int:
        """Start one worker and wait until it exits; return its exit status."""
        # Started from this (the main) thread on purpose: PR_SET_PDEATHSIG fires
        # when the *thread* that forked the child exits, and trio.run_process
        # forks from a worker thread that trio may retire while the child runs.
        process = subprocess.Popen(  # noqa: ASYNC220 -- see above; fork+exec is quick
            spec.command,
            pass_fds=spec.pass_fds,
            process_group=0,
            env=self._env,
            stdin=subprocess.DEVNULL,
        )
        LOGGER.info("started worker %d (pid %d)", spec.number, process.pid)
        self._running[spec.number] = process
        pidfd = os.pidfd_open(process.pid)
        try:
            with trio.CancelScope(shield=True):
                # Shielded: a worker is never left unwaited (a zombie, or an orphan
                # still serving); the signals forwarded from run() and _kill_after
                # end it, and this reaps it.
                await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
            del self._running[spec.number]
        return process.wait()

    def signal_workers(self, signum: int) -> None:
        """Send *signum* to every running worker (``SIGHUP``: reload TLS files)."""
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for process in list(self._running.values()):
            # send_signal() skips a child it has already reaped.
            process.send_signal(signum)

    async def _kill_after(self, delay: float) -> None:
        await trio.sleep(delay)
        if self._running:
            self._clean = False
            LOGGER.warning(
                "%d workers still running after %.1f s: killing", len(self._running), delay
            )
            self._signal_all(signal.SIGKILL)

    def _close_sockets(self) -> None:
        # The workers' own copies keep listening until their graceful shutdown closes them.
        for sock in self._sockets:
            sock.close()


def _how(status: int) -> str:
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:  # pragma: no cover -- a real-time signal has no name
        return f"was killed by signal {-status}"


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel for SIGTERM when the parent dies; ``False`` if it already has.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere there is no parent
    death signal, and this only checks that the parent is still there.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # pragma: no cover
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    # The parent may have died before prctl(): then this process was reparented.
    return os.getppid() == parent_pid
