"""``trio-echo --metrics`` end to end (``_operations``, its wiring in ``_roles``): the real
console script scraped over loopback, by promtool's checker and by a real Prometheus."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import EchoProcess, Spawn, StartProcess
from .processes import TRIO_ECHO, echo_once, fill_both_directions, kill_if_running

pytestmark = pytest.mark.system

METRICS_LINE = r"metrics on http://(\S+):(\d+)/metrics"


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET http://127.0.0.1:PORT/PATH; the status and body (errors included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def metrics_port(process: EchoProcess) -> int:
    return int(process.wait_for(METRICS_LINE).group(2))


def test_a_scrape_counts_what_the_server_did(echo_process: StartProcess) -> None:
    server = echo_process("--metrics", "0", "--rounds", "1")
    port = metrics_port(server)
    for i in range(3):
        assert echo_once(server.port, f"hello {i}".encode()) == f"hello {i}".encode()
    server.wait_for(r"closed .* reason=rounds")
    got = scrape(port)
    assert got["trio_echo_connections_accepted_total", ()] == 3
    assert got["trio_echo_rounds_total", ()] == 3
    assert got["trio_echo_received_bytes_total", ()] == len(b"hello 0") * 3
    assert got["trio_echo_sent_bytes_total", ()] == len(b"hello 0") * 3
    # The close of the last one may be logged just before it is counted: poll, bounded.
    deadline = time.monotonic() + 5
    while got["trio_echo_connections_closed_total", (("reason", "rounds"),)] != 3:
        assert time.monotonic() < deadline, got
        time.sleep(0.02)
        got = scrape(port)
    assert got["trio_echo_connections_active", ()] == 0
    assert abs(got["trio_echo_process_start_time_seconds", ()] - time.time()) < 60
    assert server.stop() == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian: prometheus)")
def test_promtool_accepts_a_live_scrape(echo_process: StartProcess) -> None:
    server = echo_process("--metrics", "0", "--latency", "1ms")
    port = metrics_port(server)
    echo_once(server.port, b"x")
    status, body = http_get(port, "/metrics")
    assert status == 200
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.stop() == 0


def test_readyz_is_503_from_the_moment_a_shutdown_starts(echo_process: StartProcess) -> None:
    server = echo_process("--metrics", "0", "--grace", "30")
    port = metrics_port(server)
    assert http_get(port, "/readyz") == (200, b"ready\n")
    with server.connect() as client:
        # A connection stuck sending an echo nobody reads keeps the shutdown going.
        fill_both_directions(client)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for("shutting down: 1 connection")
        assert http_get(port, "/readyz") == (503, b"not ready\n")
        assert http_get(port, "/healthz") == (200, b"ok\n")
    assert server.finish()[0] == 0


def test_metrics_address_in_use_is_a_one_line_start_up_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [TRIO_ECHO, "--port", "0", "--metrics", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"trio-echo: error: cannot serve metrics on 127.0.0.1:{port}: " + (
        "Address already in use"
    )
    assert "Traceback" not in result.stderr


@pytest.fixture
def worker_pids() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    kill_if_running(pids)


def test_the_supervisor_serves_the_sum_and_each_worker(
    spawn: Spawn, worker_pids: list[int]
) -> None:
    parent = spawn([TRIO_ECHO, "--port", "0", "--workers", "2", "--rounds", "1", "--metrics", "0"])
    port = int(parent.wait_for(r"\[supervisor\] starting 2 workers on 127\.0\.0\.1:(\d+)")[1])
    mport = int(parent.wait_for(METRICS_LINE)[2])
    for number in (1, 2):
        worker_pids.append(int(parent.wait_for(rf"started worker {number} \(pid (\d+)\)")[1]))
    for number in (1, 2):
        parent.wait_for(rf"\[worker {number}\] listening on")
    deadline = time.monotonic() + 10
    while http_get(mport, "/readyz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sent = 40
    for i in range(sent):
        assert echo_once(port, b"%d" % i) == b"%d" % i
    # Workers report every 0.5 s: poll, bounded.
    while True:
        got = scrape(mport)
        per_worker = [got.get(("trio_echo_rounds_total", (("worker", n),)), 0) for n in "12"]
        if got.get(("trio_echo_rounds_total", ()), 0) == sent:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    assert sum(per_worker) == sent
    assert got["trio_echo_connections_accepted_total", ()] == sent
    with socket.create_connection(("127.0.0.1", port), timeout=10) as busy:
        # A connection stuck mid-echo keeps its worker's shutdown going.
        fill_both_directions(busy)
        parent.signal(signal.SIGTERM)
        parent.wait_for(r"SIGTERM received: stopping 2 workers")
        assert http_get(mport, "/readyz") == (503, b"not ready\n")
        assert http_get(mport, "/healthz") == (200, b"ok\n")
    status, log = parent.finish()
    assert status == 0, log
    assert "Traceback" not in log


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus")
def test_a_real_prometheus_scrapes_it_and_answers_a_query(
    echo_process: StartProcess, tmp_path: Path
) -> None:
    server = echo_process("--metrics", "0", "--rounds", "1")
    target = metrics_port(server)
    for i in range(5):
        echo_once(server.port, b"%d" % i)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: trio-echo\n    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        api_port = probe.getsockname()[1]
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{api_port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = urllib.parse.quote('trio_echo_rounds_total{job="trio-echo"}')
        deadline = time.monotonic() + 30
        value = None
        while value is None:
            assert time.monotonic() < deadline, "Prometheus never answered with the counter"
            time.sleep(0.5)
            try:
                status, body = http_get(api_port, f"/api/v1/query?query={query}")
            except OSError:
                continue  # Not listening yet.
            result = json.loads(body)["data"]["result"] if status == 200 else []
            if result:
                value = float(result[0]["value"][1])
        assert value == 5
        status, body = http_get(api_port, "/api/v1/targets")
        health = [t["health"] for t in json.loads(body)["data"]["activeTargets"]]
        assert health == ["up"]
    finally:
        prometheus.terminate()
        prometheus.wait(30)
    assert server.stop() == 0


def test_refused_clients_are_counted_in_the_metrics(echo_process: StartProcess) -> None:
    server = echo_process(
        "--metrics", "0", "--proxy-protocol", "--proxy-trusted", "10.0.0.0/8,192.0.2.0/24"
    )
    port = metrics_port(server)
    for _ in range(3):
        with server.connect() as client:
            client.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nhello")
            assert client.recv(100) == b""  # EOF before anything is read or echoed
    server.wait_for(r"refused proxy-untrusted: 127\.0\.0\.1:\d+: not a trusted PROXY source")
    deadline = time.monotonic() + 5
    key = ("trio_echo_connections_closed_total", (("reason", "proxy-untrusted"),))
    while scrape(port)[key] != 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert server.count("refused proxy-untrusted") == 1
    assert server.stop() == 0
