"""Log output for operators: set-up, the JSON line format, start-up errors, statistics lines.

Log records that mark an event carry it in ``extra``: ``event`` (``start``,
``close``, ``stats``, ``stopping``, ``shutdown``, ``error``) and ``fields`` (a
dict of JSON-able values).  The text format shows only the message, which already
holds the same figures; :class:`JSONFormatter` writes one JSON object per
line with the event and its fields as keys, for log shippers.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

import attrs
import trio

from ._stats import ServerStatistics

__all__ = [
    "WARNING_INTERVAL",
    "JSONFormatter",
    "LogLimiter",
    "configure_logging",
    "counters",
    "event",
    "report_startup_error",
    "report_statistics",
]

LOGGER = logging.getLogger("trio_echo")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# A warning that a flood can repeat (limits hit, refusals, dropped datagrams)
# is logged at most once per this many seconds per kind, so that the flood
# cannot flood the log too.
WARNING_INTERVAL: Final = 10.0


class LogLimiter:
    """Whether a repeated warning of some kind may be logged now.

    Each kind is limited on its own (hitting the connection limit must not
    hide running out of file descriptors).  Times are the caller's clock
    (trio time); no I/O.
    """

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float = WARNING_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def allow(self, kind: str, now: float) -> bool:
        """``True`` (and the kind's clock restarted) unless *kind* was allowed
        less than :attr:`interval` seconds before *now*."""
        if now - self._last.get(kind, -math.inf) < self.interval:
            return False
        self._last[kind] = now
        return True


def event(name: str, **fields: object) -> dict[str, Any]:
    """The ``extra=`` for a log call that marks event *name* with *fields*."""
    return {"event": name, "fields": fields}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``event``
    (``log`` for records that mark none), ``message``, then the event's fields.

    With *process* (``--workers``: ``"supervisor"``, ``"worker 2"``), every line
    also has ``"process"``."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        if self._process is not None:
            line["process"] = self._process
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


def configure_logging(
    level: str, log_format: Literal["text", "json"], process: str | None = None
) -> None:
    """Log to stderr at *level* in *log_format*; every line names *process*
    (``--workers``: ``"supervisor"``, ``"worker 2"``) if given."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JSONFormatter(process=process)
    else:
        prefix = "" if process is None else f"[{process}] "
        formatter = logging.Formatter(TEXT_FORMAT.replace("%(message)s", prefix + "%(message)s"))
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])


def report_startup_error(message: str, log_format: Literal["text", "json"]) -> None:
    """Say why the server cannot start: ``trio-echo: error: <message>`` on stderr,
    or, with the JSON log format, an ``error`` event (so a log shipper parses it)."""
    if log_format == "json":
        LOGGER.error("%s", message, extra=event("error"))
    else:
        print(f"trio-echo: error: {message}", file=sys.stderr)


def counters(stats: ServerStatistics) -> dict[str, object]:
    """The server's counters as event fields: the same in ``stats`` and ``shutdown``."""
    return {
        "active": stats.active,
        "accepted": stats.accepted,
        "closed": stats.closed,
        "closed_by_reason": dict(stats.closed_by_reason),
        "rounds": stats.rounds,
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "limit_waits": stats.limit_waits,
        "accept_errors": stats.accept_errors,
        # UDP (issue 15): present only when the server serves UDP.
        **({} if stats.udp is None else {"udp": attrs.asdict(stats.udp)}),
    }


class HasStatistics(Protocol):
    def statistics(self) -> ServerStatistics: ...


async def report_statistics(server: HasStatistics, interval: float) -> None:
    """Log one ``stats`` line every *interval* seconds until cancelled.

    Each line has the server's totals and the rates per second since the
    previous line (since the call, for the first).
    """
    last = server.statistics()
    last_time = trio.current_time()
    while True:
        await trio.sleep(interval)
        now = server.statistics()
        now_time = trio.current_time()
        elapsed = now_time - last_time
        rates = {
            name: round((getattr(now, name) - getattr(last, name)) / elapsed, 3)
            for name in ("accepted", "closed", "rounds", "bytes_in", "bytes_out")
        }
        by_reason = " ".join(f"{reason}={n}" for reason, n in now.closed_by_reason.items())
        LOGGER.info(
            "stats: active=%d accepted=%d closed=%d (%s) rounds=%d bytes_in=%d bytes_out=%d; "
            "per second: accepted=%.1f rounds=%.1f bytes_in=%.0f bytes_out=%.0f%s",
            now.active,
            now.accepted,
            now.closed,
            by_reason or "none",
            now.rounds,
            now.bytes_in,
            now.bytes_out,
            rates["accepted"],
            rates["rounds"],
            rates["bytes_in"],
            rates["bytes_out"],
            _udp_part(now),
            extra=event("stats", **counters(now), interval=round(elapsed, 3), per_second=rates),
        )
        last, last_time = now, now_time


def _udp_part(stats: ServerStatistics) -> str:
    """``; udp: received=.. echoed=.. dropped=.. (reasons)`` for the stats line (issue 15)."""
    udp = stats.udp
    if udp is None:
        return ""
    reasons = " ".join(f"{reason}={n}" for reason, n in udp.dropped_by_reason.items())
    return (
        f"; udp: received={udp.received} echoed={udp.echoed} dropped={udp.dropped}"
        f" ({reasons or 'none'}) sources={udp.sources}"
    )
