"""The Prometheus exposition (``_metrics``): series names, labels, sums and per-worker series."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trio_echo import ServerStatistics, UDPStatistics
from trio_echo._metrics import FAULT_KINDS, Exposition, Snapshot
from trio_echo._reasons import ALL as ALL_REASONS


def stats(**changes: object) -> ServerStatistics:
    values: dict[str, object] = {
        "active": 2,
        "accepted": 7,
        "closed": 5,
        "closed_by_reason": {"rounds": 4, "idle": 1},
        "rounds": 11,
        "bytes_in": 1000,
        "bytes_out": 900,
        "limit_waits": 3,
        "accept_errors": 1,
        "faults": {"latency": 6},
    }
    values.update(changes)
    return ServerStatistics(**values)  # type: ignore[arg-type]


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_every_series_from_one_snapshot() -> None:
    body, content_type = Exposition(lambda: Snapshot(total=stats()), start_time=1234.5).render(
        None
    )
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(body)
    assert got["trio_echo_connections_accepted_total", ()] == 7
    assert got["trio_echo_connections_active", ()] == 2
    assert got["trio_echo_rounds_total", ()] == 11
    assert got["trio_echo_received_bytes_total", ()] == 1000
    assert got["trio_echo_sent_bytes_total", ()] == 900
    assert got["trio_echo_connection_limit_waits_total", ()] == 3
    assert got["trio_echo_accept_errors_total", ()] == 1
    assert got["trio_echo_process_start_time_seconds", ()] == 1234.5
    assert got["trio_echo_connections_closed_total", (("reason", "rounds"),)] == 4
    assert got["trio_echo_connections_closed_total", (("reason", "idle"),)] == 1
    # Every reason and fault kind is there from the start, at 0 until it happens.
    for reason in ALL_REASONS:
        assert ("trio_echo_connections_closed_total", (("reason", reason),)) in got
    for kind in FAULT_KINDS:
        assert ("trio_echo_faults_total", (("kind", kind),)) in got
    assert got["trio_echo_faults_total", (("kind", "latency"),)] == 6
    assert all(name.startswith("trio_echo_") for name, _ in got)


def test_unknown_reasons_are_exposed_too() -> None:
    body, _ = Exposition(
        lambda: Snapshot(total=stats(closed_by_reason={"future-reason": 2})), start_time=0
    ).render(None)
    assert samples(body)["trio_echo_connections_closed_total", (("reason", "future-reason"),)] == 2


def test_before_the_server_starts_only_process_series() -> None:
    body, _ = Exposition(lambda: None, start_time=5.0).render(None)
    names = {name for name, _ in samples(body)}
    assert names == {"trio_echo_build_info", "trio_echo_process_start_time_seconds"}


def test_sum_without_worker_label_and_each_worker_with_it() -> None:
    snapshot = Snapshot(total=stats(rounds=30), workers={1: stats(rounds=10), 2: stats(rounds=20)})
    got = samples(Exposition(lambda: snapshot, start_time=0).render(None)[0])
    assert got["trio_echo_rounds_total", ()] == 30
    assert got["trio_echo_rounds_total", (("worker", "1"),)] == 10
    assert got["trio_echo_rounds_total", (("worker", "2"),)] == 20
    assert got["trio_echo_connections_closed_total", (("reason", "rounds"), ("worker", "2"))] == 4


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    body, content_type = Exposition(lambda: Snapshot(total=stats()), start_time=0).render(
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest.mark.system
@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian: prometheus)")
@pytest.mark.parametrize(
    "workers", [{}, {1: stats(), 2: stats(active=0)}], ids=["single", "workers"]
)
def test_promtool_check_metrics_passes(workers: dict[int, ServerStatistics]) -> None:
    body, _ = Exposition(lambda: Snapshot(total=stats(), workers=workers), start_time=1.0).render(
        None
    )
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""


def test_udp_series_when_the_server_serves_udp() -> None:
    udp = UDPStatistics(
        received=10,
        echoed=6,
        bytes_in=60,
        bytes_out=60,
        dropped=4,
        dropped_by_reason={"dropped_port": 1, "dropped_rate_source": 3},
        sources=2,
    )
    got = samples(Exposition(lambda: Snapshot(total=stats(udp=udp)), start_time=0).render(None)[0])
    assert got["trio_echo_udp_datagrams_received_total", ()] == 10
    assert got["trio_echo_udp_datagrams_echoed_total", ()] == 6
    assert got["trio_echo_udp_received_bytes_total", ()] == 60
    assert got["trio_echo_udp_sent_bytes_total", ()] == 60
    assert got["trio_echo_udp_sources", ()] == 2
    assert got["trio_echo_udp_datagrams_dropped_total", (("reason", "dropped_port"),)] == 1
    assert got["trio_echo_udp_datagrams_dropped_total", (("reason", "dropped_size"),)] == 0
    assert got["trio_echo_udp_datagrams_dropped_total", (("reason", "dropped_rate_source"),)] == 3
    # Without UDP, no UDP series at all.
    plain = samples(Exposition(lambda: Snapshot(total=stats()), start_time=0).render(None)[0])
    assert not [name for name, _ in plain if name.startswith("trio_echo_udp")]


@pytest.mark.system
@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian: prometheus)")
def test_promtool_accepts_the_udp_series() -> None:
    udp = UDPStatistics(
        received=1, echoed=1, bytes_in=1, bytes_out=1, dropped=0, dropped_by_reason={}, sources=1
    )
    body, _ = Exposition(lambda: Snapshot(total=stats(udp=udp)), start_time=1.0).render(None)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""
