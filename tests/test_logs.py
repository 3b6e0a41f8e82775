"""Logging (``_logs``): the JSON line format, the statistics lines, what each connection logs."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_echo import ServerStatistics, UDPStatistics
from trio_echo._logs import JSONFormatter, counters, event, report_statistics

from .conftest import StartProcess
from .processes import read_until_eof


def snapshot(**counters: int) -> ServerStatistics:
    base: dict[str, Any] = dict.fromkeys(
        ("active", "accepted", "closed", "rounds", "bytes_in", "bytes_out"), 0
    ) | {"limit_waits": 0, "accept_errors": 0}
    closed = counters.get("closed", 0)
    return ServerStatistics(
        closed_by_reason={"eof": closed} if closed else {}, **(base | counters)
    )


class FakeServer:
    """Hands out prepared snapshots, one per statistics() call."""

    def __init__(self, *snapshots: ServerStatistics) -> None:
        self._snapshots = list(snapshots)

    def statistics(self) -> ServerStatistics:
        return self._snapshots.pop(0)


async def test_one_line_per_interval_with_rates_since_the_last(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = FakeServer(
        snapshot(),
        snapshot(active=2, accepted=4, closed=2, rounds=10, bytes_in=2000, bytes_out=1000),
        snapshot(active=0, accepted=5, closed=5, rounds=30, bytes_in=2000, bytes_out=9000),
    )
    with trio.move_on_after(4.5):
        await report_statistics(server, 2.0)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "stats"]
    assert [r.getMessage() for r in lines] == [
        "stats: active=2 accepted=4 closed=2 (eof=2) rounds=10 bytes_in=2000 bytes_out=1000; "
        "per second: accepted=2.0 rounds=5.0 bytes_in=1000 bytes_out=500",
        "stats: active=0 accepted=5 closed=5 (eof=5) rounds=30 bytes_in=2000 bytes_out=9000; "
        "per second: accepted=0.5 rounds=10.0 bytes_in=0 bytes_out=4000",
    ]
    fields = lines[1].fields  # type: ignore[attr-defined]
    assert fields["per_second"] == {
        "accepted": 0.5,
        "closed": 1.5,
        "rounds": 10.0,
        "bytes_in": 0.0,
        "bytes_out": 4000.0,
    }
    assert (fields["interval"], fields["closed_by_reason"]) == (2.0, {"eof": 5})


async def test_no_closes_yet_reads_none(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    with trio.move_on_after(1.5):
        await report_statistics(FakeServer(snapshot(), snapshot(active=1, accepted=1)), 1.0)
    assert "closed=0 (none)" in caplog.records[-1].getMessage()


async def test_stats_event_carries_every_counter_of_the_shutdown_event(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    now = snapshot(accepted=3, limit_waits=2, accept_errors=1)
    with trio.move_on_after(1.5):
        await report_statistics(FakeServer(snapshot(), now), 1.0)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "stats"]
    fields = record.fields  # type: ignore[attr-defined]
    assert {name: fields[name] for name in counters(now)} == counters(now)
    assert (fields["limit_waits"], fields["accept_errors"]) == (2, 1)
    assert set(counters(now)) >= {
        *("accepted", "closed_by_reason", "rounds", "bytes_in", "bytes_out"),
        *("limit_waits", "accept_errors"),
    }


def test_json_formatter_puts_event_fields_at_top_level() -> None:
    record = logging.LogRecord("trio_echo", logging.INFO, __file__, 1, "closed %s", ("x",), None)
    for key, value in event("close", peer="127.0.0.1:5", rounds=3).items():
        setattr(record, key, value)
    line = json.loads(JSONFormatter().format(record))
    assert line.pop("time").endswith("Z")
    assert line == {
        "level": "INFO",
        "event": "close",
        "message": "closed x",
        "peer": "127.0.0.1:5",
        "rounds": 3,
    }


def test_json_formatter_plain_record_and_exception() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "trio_echo", logging.ERROR, __file__, 1, "oops", (), exc_info=sys.exc_info()
        )
    line = json.loads(JSONFormatter().format(record))
    assert (line["event"], line["message"]) == ("log", "oops")
    assert "RuntimeError: boom" in line["exception"]


def test_cli_json_log_has_start_close_stats_and_shutdown_objects(
    echo_process: StartProcess,
) -> None:
    server = echo_process(
        "--log-format", "json", "--stats-interval", "200ms", "--rounds", "1", "--framing", "line"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"hi\nthere\n")
        assert read_until_eof(client) == b"hi\n"
    server.wait_for(re.compile(r'"event":"close"'))
    stats = json.loads(server.wait_for(re.compile(r'^\{.*"event":"stats".*"closed":1.*')).group())
    assert (stats["limit_waits"], stats["accept_errors"]) == (0, 0)
    status, log = server.stop(), server.log
    assert status == 0
    # Every line is one JSON object; the last is the summary.
    lines = [json.loads(line) for line in log.splitlines()]
    summary = lines[-1]
    assert summary["event"] == "shutdown"
    assert set(summary) - {"time", "message"} == set(stats) - {
        "time",
        "message",
        "interval",
        "per_second",
    }
    assert (summary["accepted"], summary["rounds"], summary["closed_by_reason"]) == (
        1,
        1,
        {"rounds": 1},
    )


def test_cli_json_start_and_close_objects(echo_process: StartProcess) -> None:
    server = echo_process("--log-format", "json")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"abc")
        assert client.recv(3) == b"abc"
        client.shutdown(socket.SHUT_WR)
        assert read_until_eof(client) == b""
    close = json.loads(server.wait_for(re.compile(r'^\{"time".*"event":"close".*')).group())
    status = server.stop()
    assert status == 0
    assert close["reason"] == "eof"
    assert (close["rounds"], close["bytes_in"], close["bytes_out"]) == (1, 3, 3)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", close["peer"])


def test_close_of_each_connection_is_logged_with_peer_and_reason(
    echo_process: StartProcess,
) -> None:
    server = echo_process("--rounds", "3", "--framing", "line")
    with server.connect() as client:
        client_port = client.getsockname()[1]
        client.sendall(b"a\nb\nc\nd\ne\n")
        assert read_until_eof(client) == b"a\nb\nc\n"
    match = server.wait_for(re.compile(r"closed (\S+): rounds=(\d+) .*duration=\S+ reason=(\S+)"))
    assert match.group(2, 3) == ("3", "rounds")
    assert match.group(1) == f"127.0.0.1:{client_port}"
    assert server.stop() == 0


async def test_stats_line_and_event_carry_the_udp_counters(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    udp = UDPStatistics(
        received=10,
        echoed=7,
        bytes_in=70,
        bytes_out=70,
        dropped=3,
        dropped_by_reason={"dropped_port": 1, "dropped_size": 2},
        sources=4,
    )
    now = attrs.evolve(snapshot(), udp=udp)
    with trio.move_on_after(1.5):
        await report_statistics(FakeServer(snapshot(), now), 1.0)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "stats"]
    assert record.getMessage().endswith(
        "; udp: received=10 echoed=7 dropped=3 (dropped_port=1 dropped_size=2) sources=4"
    )
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["udp"] == attrs.asdict(udp)
    assert "udp" not in counters(snapshot())
