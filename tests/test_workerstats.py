"""Workers' statistics reports to the supervisor (``_workerstats``): pipe format, sums."""

from __future__ import annotations

import logging
import os

import pytest
import trio

from trio_echo import ServerStatistics
from trio_echo._workerstats import ZERO, WorkerReports, add, decode, encode, report_to_supervisor


def stats(rounds: int, active: int = 1, reason: str = "eof") -> ServerStatistics:
    return ServerStatistics(
        active=active,
        accepted=rounds + active,
        closed=rounds,
        closed_by_reason={reason: rounds},
        rounds=rounds,
        bytes_in=rounds * 10,
        bytes_out=rounds * 10,
        limit_waits=0,
        accept_errors=0,
        faults={"latency": rounds},
    )


def test_a_report_round_trips_and_fits_in_pipe_buf() -> None:
    line = encode(42, True, stats(5))
    assert line.endswith(b"\n")
    assert len(line) < 4096  # written whole or not at all
    assert decode(line) == (42, True, stats(5))


@pytest.mark.parametrize(
    "line", [b"not json", b"[]", b'{"pid": 1}', b'{"pid":1,"ready":1,"stats":{}}']
)
def test_a_line_that_is_not_a_report_is_a_value_error(line: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode(line)


def test_add_sums_every_counter_and_merges_the_maps() -> None:
    total = add(stats(2, reason="eof"), stats(3, reason="rounds"))
    assert (total.rounds, total.active, total.accepted, total.bytes_in) == (5, 2, 7, 50)
    assert total.closed_by_reason == {"eof": 2, "rounds": 3}
    assert total.faults == {"latency": 5}
    assert add(ZERO, stats(4)) == stats(4)


def test_sums_never_go_down_when_a_worker_is_replaced() -> None:
    reports = WorkerReports()
    reports.receive(1, encode(100, True, stats(10)))
    reports.receive(2, encode(200, True, stats(20)))
    assert reports.snapshot().total.rounds == 30
    assert reports.any_ready
    reports.worker_stopped(1)
    assert reports.snapshot().total.active == 1
    # Its replacement starts from zero; the dead one's rounds stay in the sum.
    reports.receive(1, encode(101, True, stats(1)))
    snapshot = reports.snapshot()
    assert snapshot.total.rounds == 31
    assert snapshot.total.active == 2
    assert snapshot.workers[1].rounds == 1
    assert snapshot.workers[2].rounds == 20


def test_not_ready_until_a_worker_says_so() -> None:
    reports = WorkerReports()
    assert not reports.any_ready
    reports.receive(1, encode(100, False, stats(0)))
    assert not reports.any_ready
    reports.receive(1, encode(100, True, stats(0)))
    assert reports.any_ready
    reports.worker_stopped(1)
    assert not reports.any_ready


def test_a_bad_report_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    reports = WorkerReports()
    reports.receive(1, encode(100, True, stats(3)))
    with caplog.at_level(logging.WARNING, logger="trio_echo"):
        reports.receive(1, b"garbage")
    assert "worker 1: bad statistics report" in caplog.text
    assert reports.snapshot().total.rounds == 3


async def test_reports_travel_over_a_real_pipe() -> None:
    read_end, write_end = os.pipe()
    reports = WorkerReports()
    current = [stats(1)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reports.read, 1, read_end)
        reporter = trio.CancelScope()

        async def report() -> None:
            with reporter:
                await report_to_supervisor(write_end, lambda: (True, current[0]))

        nursery.start_soon(report)
        with trio.fail_after(5):
            while 1 not in reports.snapshot().workers:  # noqa: ASYNC110 -- bounded
                await trio.sleep(0.01)
        current[0] = stats(7)
        # Cancelling the reporter sends a last report, then closes its end: EOF.
        reporter.cancel()
    assert reports.snapshot().workers[1] == stats(7)
