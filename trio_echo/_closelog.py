"""The per-connection close line: one INFO record (and JSON event) per closed connection."""

from __future__ import annotations

import logging

import trio

from ._connection import Connection
from ._faults import fault_summary
from ._logs import event

__all__ = ["log_close"]

LOGGER = logging.getLogger("trio_echo")


def log_close(conn: Connection, reason: str, *, faults_on: bool) -> None:
    """Log *conn*'s close with *reason*; with *faults_on*, what was injected."""
    duration = trio.current_time() - conn.started
    faults = fault_summary(conn.transport) if faults_on else None
    LOGGER.info(
        "closed %s: rounds=%d bytes_in=%d bytes_out=%d duration=%.3fs reason=%s%s",
        conn.peer,
        conn.rounds,
        conn.bytes_in,
        conn.bytes_out,
        duration,
        reason,
        "" if faults is None else f" faults={faults}",
        extra=event(
            "close",
            peer=conn.peer,
            rounds=conn.rounds,
            bytes_in=conn.bytes_in,
            bytes_out=conn.bytes_out,
            duration=round(duration, 6),
            reason=reason,
            **({} if faults is None else {"faults": faults}),
        ),
    )
