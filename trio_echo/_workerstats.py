"""``--workers`` with ``--metrics``: workers report their statistics to the supervisor over a pipe.

Each worker writes one JSON line (its PID, whether it is ready, its
:class:`~trio_echo.ServerStatistics`) every :data:`REPORT_INTERVAL` seconds,
and once more when it stops, to a pipe the supervisor created for its
worker number; the supervisor reads every pipe and serves the sum and
each worker's figures.  A worker never blocks on the pipe: its end is
non-blocking and a report that does not fit is dropped (the next one
follows).  A report is far below ``PIPE_BUF``, so it is written whole or
not at all.

When a worker is replaced (a new PID on the same pipe), the last figures of
the one that died are kept in the sum, so the sums never go down.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from ._metrics import Snapshot
from ._stats import ServerStatistics

__all__ = ["REPORT_INTERVAL", "WorkerReports", "report_to_supervisor"]

LOGGER = logging.getLogger("trio_echo")

#: Seconds between a worker's reports: the figures a scrape sees are at most this old.
REPORT_INTERVAL: Final = 0.5
# A line longer than this is not a report (the supervisor drops it).
MAX_REPORT: Final = 65536

_COUNTERS: Final = ("accepted", "closed", "rounds", "bytes_in", "bytes_out")
_MORE: Final = ("limit_waits", "accept_errors")


def encode(pid: int, ready: bool, stats: ServerStatistics) -> bytes:
    """One report line."""
    line = {"pid": pid, "ready": ready, "stats": attrs.asdict(stats)}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> tuple[int, bool, ServerStatistics]:
    """The PID, readiness and statistics in a report line.

    Raises:
      ValueError: the line is not a report (:exc:`json.JSONDecodeError` is one).
    """
    try:
        report: Any = json.loads(line)
        return int(report["pid"]), bool(report["ready"]), ServerStatistics(**report["stats"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a statistics report: {exc}") from exc


def add(a: ServerStatistics, b: ServerStatistics) -> ServerStatistics:
    """The sum of two snapshots, counter by counter."""

    def merged(x: Any, y: Any) -> dict[str, int]:
        out = dict(x)
        for key, value in y.items():
            out[key] = out.get(key, 0) + value
        return dict(sorted(out.items()))

    return ServerStatistics(
        active=a.active + b.active,
        closed_by_reason=merged(a.closed_by_reason, b.closed_by_reason),
        faults=merged(a.faults, b.faults),
        **{name: getattr(a, name) + getattr(b, name) for name in (*_COUNTERS, *_MORE)},
    )


ZERO: Final = ServerStatistics(
    active=0,
    accepted=0,
    closed=0,
    closed_by_reason={},
    rounds=0,
    bytes_in=0,
    bytes_out=0,
    limit_waits=0,
    accept_errors=0,
)


async def report_to_supervisor(
    fd: int, status: Callable[[], tuple[bool, ServerStatistics]]
) -> None:
    """Write a report of *status* to *fd* every REPORT_INTERVAL seconds until
    cancelled, then a last one.  Takes over *fd* and closes it."""
    os.set_blocking(fd, False)
    pid = os.getpid()
    try:
        while True:
            _write(fd, encode(pid, *status()))
            await trio.sleep(REPORT_INTERVAL)
    finally:
        _write(fd, encode(pid, *status()))
        os.close(fd)


def _write(fd: int, report: bytes) -> None:
    try:
        os.write(fd, report)
    except BlockingIOError:
        pass  # The supervisor is behind: the next report replaces this one.
    except OSError as exc:
        LOGGER.debug("cannot report statistics to the supervisor: %s", exc)


@attrs.define
class _Worker:
    pid: int
    ready: bool
    stats: ServerStatistics


class WorkerReports:
    """The supervisor's side: the latest report of each worker, and their sum."""

    def __init__(self) -> None:
        self._latest: dict[int, _Worker] = {}
        # Figures of workers that were replaced, kept in the sums.
        self._retired = ZERO

    def snapshot(self) -> Snapshot:
        """The sum over every worker that ever reported, and each running one's figures."""
        total = self._retired
        for worker in self._latest.values():
            total = add(total, worker.stats)
        workers = {number: worker.stats for number, worker in self._latest.items()}
        return Snapshot(total=total, workers=workers)

    @property
    def any_ready(self) -> bool:
        """Whether at least one worker reports that it accepts clients."""
        return any(worker.ready for worker in self._latest.values())

    def receive(self, number: int, line: bytes) -> None:
        """Take worker *number*'s report *line* (one that is not a report: logged, dropped)."""
        try:
            pid, ready, stats = decode(line)
        except ValueError as exc:
            LOGGER.warning("worker %d: bad statistics report: %s", number, exc)
            return
        previous = self._latest.get(number)
        if previous is not None and previous.pid != pid:
            self._retired = add(self._retired, attrs.evolve(previous.stats, active=0))
        self._latest[number] = _Worker(pid=pid, ready=ready, stats=stats)

    def worker_stopped(self, number: int) -> None:
        """Worker *number* has exited: it is not ready and has no open connection
        (its counters stay, in the sums too)."""
        worker = self._latest.get(number)
        if worker is not None:
            worker.ready = False
            worker.stats = attrs.evolve(worker.stats, active=0)

    async def read(self, number: int, fd: int) -> None:
        """Read worker *number*'s reports from *fd* until cancelled or EOF; takes over *fd*."""
        pending = bytearray()
        async with trio.lowlevel.FdStream(fd) as stream:
            while chunk := await stream.receive_some(MAX_REPORT):
                pending += chunk
                *lines, rest = pending.split(b"\n")
                pending = bytearray(rest) if len(rest) <= MAX_REPORT else bytearray()
                for line in lines:
                    self.receive(number, bytes(line))
