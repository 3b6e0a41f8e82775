"""What ``trio-echo bench`` prints for a person (trio_echo._bench.output)."""

from __future__ import annotations

from trio_echo import BenchResult, DatagramCounts, LatencySummary
from trio_echo._bench.histogram import Histogram
from trio_echo._bench.output import PROGRESS_CLEAR, ping_line, progress_line, summary


def result(**changes: object) -> BenchResult:
    latency = LatencySummary(min=30.0, p50=40.0, p90=50.0, p99=90.0, p999=120.0, max=2000.0)
    fields: dict[str, object] = {
        "address": "127.0.0.1:7",
        "mode": "closed",
        "connections": 8,
        "size": 1024,
        "seconds": 2.0,
        "round_trips": 100_000,
        "connects": 8,
        "bytes": 102_400_000,
        "latency": latency,
        "connect": latency,
        "errors": {},
        "histogram": Histogram(),
        "connect_histogram": Histogram(),
    }
    fields.update(changes)
    return BenchResult(**fields)  # type: ignore[arg-type]


def test_ping_lines_read_like_ping() -> None:
    assert ping_line(1, 64, 213_456) == "seq=1 bytes=64 time=0.213 ms"


def test_the_progress_line_redraws_in_place() -> None:
    line = progress_line(1.5, 12_345, 8_230.0, 1_230_000)
    assert line.startswith(PROGRESS_CLEAR)
    assert "\n" not in line
    assert "1.5 s" in line
    assert "12,345 round trips" in line
    assert "8,230/s" in line
    assert "p99 1.230 ms" in line


def test_the_summary_names_every_figure() -> None:
    text = summary(result())
    assert text.splitlines() == [
        "--- 127.0.0.1:7 trio-echo bench: closed loop, 8 connections, "
        "1024-byte messages, 2.00 s measured ---",
        "round trips  100,000 (50,000.0/s), 48.83 MiB/s, 102,400,000 bytes echoed and verified",
        "latency      min 0.030  p50 0.040  p90 0.050  p99 0.090  p99.9 0.120  max 2.000 ms",
        "connect      min 0.030  p50 0.040  p90 0.050  p99 0.090  p99.9 0.120  max 2.000 ms, "
        "8 made",
        "errors       none",
    ]


def test_a_udp_summary_names_flows_datagrams_and_their_fate() -> None:
    counts = DatagramCounts(sent=1000, lost=4, late=1, duplicates=2, reordered=3)
    text = summary(result(connections=2, size=64, udp=counts, mode="open"))
    lines = text.splitlines()
    assert lines[0].startswith(
        "--- 127.0.0.1:7 trio-echo bench: UDP open loop, 2 flows, 64-byte datagrams"
    )
    assert "datagrams    1,000 sent, 4 lost (0.40 %, 1 late), 2 duplicated, 3 reordered" in lines
    report = result(udp=counts).to_json()
    assert report["udp"] == {"sent": 1000, "lost": 4, "late": 1, "duplicates": 2, "reordered": 3}
    assert result().to_json()["udp"] is None


def test_errors_are_listed_by_kind_and_connect_only_counts_connections() -> None:
    text = summary(result(mode="connect", connects=500, errors={"reset": 2, "closed": 1}))
    assert "connections  500 (250.0/s)" in text
    assert "round trips" not in text
    assert text.endswith("errors       closed 1, reset 2")


def test_json_has_the_issues_keys() -> None:
    report = result(errors={"reset": 1}).to_json()
    assert report["round_trips"] == 100_000
    assert report["rate"] == 50_000.0
    assert report["bytes"] == 102_400_000
    assert report["latency_us"] == {
        "min": 30.0, "p50": 40.0, "p90": 50.0, "p99": 90.0, "p999": 120.0, "max": 2000.0,
    }  # fmt: skip
    assert report["connect_us"]["p999"] == 120.0
    assert report["errors"] == {"reset": 1}
    assert not result(errors={"reset": 1}).ok
    assert result().ok


def test_a_run_with_nothing_completed_is_not_ok() -> None:
    assert not result(round_trips=0, bytes=0).ok
    assert not result(mode="connect", connects=0).ok
    assert result(round_trips=0, bytes=0).rate == 0.0
