"""The benchmark harness runs end to end (``benchmarks/run.py --smoke``), so it cannot rot.

Speed is not asserted here -- only that every server starts, every scenario
runs with every echoed byte checked, and the results are complete.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.system

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RUN = BENCHMARKS / "run.py"
SCENARIOS = ("pingpong-1k", "pingpong-64", "line-64", "stream")


def smoke(tmp_path: Path, *args: str) -> dict[str, Any]:
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--output", str(output), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "| trio-echo |" in done.stdout
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def check_pingpong_and_stream(figures: dict[str, Any]) -> None:
    for scenario in SCENARIOS:
        fig = figures[scenario]
        assert fig["verified_bytes"] > 0
        assert fig["server_cpu_s"] >= 0
        if scenario == "stream":
            assert fig["mb_per_s"] > 0
        else:
            assert fig["round_trips"] > 0
            assert fig["cpu_us_per_rt"] >= 0
            assert 0 < fig["p50_us"] <= fig["p99_us"]


def test_smoke_compares_trio_echo_with_asyncio_streams(tmp_path: Path) -> None:
    result = smoke(tmp_path, "--servers", "trio-echo,asyncio-streams", "--idle-conns", "100")
    medians = result["medians"]
    assert set(medians) == {"trio-echo", "asyncio-streams"}
    for figures in medians.values():
        check_pingpong_and_stream(figures)
        assert figures["idle-100"]["rss_held_kib"] > 0
    assert "| asyncio-streams | 1.00x |" in result["table"]


def test_smoke_with_the_python_load_generator(tmp_path: Path) -> None:
    # The fallback for machines without gcc: run it even where gcc exists.
    args = ["--servers", "trio-echo", "--loadgen", "python", "--scenarios", "pingpong-64,stream"]
    result = smoke(tmp_path, *args)
    assert result["notes"][0] == "load generator: python"
    figures = result["runs"][0]["trio-echo"]
    assert figures["pingpong-64"]["round_trips"] > 0
    assert figures["stream"]["verified_bytes"] > 0


def test_unknown_server_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--servers", "nginx"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "unknown server 'nginx'" in done.stderr


def corrupting_server(listener: socket.socket) -> None:
    """Echo one connection, but change one byte of the first echo."""
    conn, _ = listener.accept()
    with conn, contextlib.suppress(ConnectionError):  # the load generator gives up
        first = True
        while data := conn.recv(65536):
            if first:
                data = bytes([data[0] ^ 1]) + data[1:]
                first = False
            conn.sendall(data)


def loadgens(tmp_path: Path) -> list[list[str]]:
    commands = [[sys.executable, str(BENCHMARKS / "pyloadgen.py")]]
    gcc = shutil.which("gcc")
    if gcc is not None:
        binary = tmp_path / "loadgen"
        subprocess.run([gcc, "-O2", "-o", str(binary), str(BENCHMARKS / "loadgen.c")], check=True)
        commands.append([str(binary)])
    return commands


@pytest.mark.parametrize("mode", ["pingpong", "stream"])
def test_load_generators_catch_a_wrong_byte(tmp_path: Path, mode: str) -> None:
    for command in loadgens(tmp_path):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            server = threading.Thread(target=corrupting_server, args=(listener,), daemon=True)
            server.start()
            port = listener.getsockname()[1]
            args = ["--mode", mode, "--port", str(port), "--conns", "1"]
            done = subprocess.run(
                [*command, *args, "--warmup", "0.1", "--duration", "0.3"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            server.join(10)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert json.loads(done.stdout)["error"].startswith("echo mismatch")


def test_udp_and_unix_benchmark_runs(tmp_path: Path) -> None:
    """``benchmarks/udp_unix.py --quick``: every variant echoes every datagram and round trip."""
    output = tmp_path / "udp_unix.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "udp_unix.py"), "--quick", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(output.read_text())["runs"]
    assert {name: fig["echoes"] for name, fig in run["udp_cpu"].items()} == {
        "trio-echo": 5000,
        "asyncio-datagram-protocol": 5000,
    }
    assert {name: fig["round_trips"] for name, fig in run["unix_tcp"].items()} == {
        "tcp": 2000,
        "unix": 2000,
    }
    flood = run["flood"]
    if "skipped" not in flood:
        assert flood["datagrams"] == 20000
        assert flood["rss_kib_after_all"] > 0


def test_thread_server_benchmark_runs(tmp_path: Path) -> None:
    # benchmarks/thread_server.py end to end, at a token size: figures printed, no timing asserted.
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "thread_server.py"),
            "--cycles",
            "3",
            "--tests",
            "3",
            "--suite-runs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "serve_in_thread start-to-ready + shutdown, 3 cycles: median" in done.stdout
    assert "3 sync tests, median of 1 runs:" in done.stdout


def test_metrics_overhead_runs_both_sides_and_scrapes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "metrics_overhead.py"),
            "--trials",
            "1",
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
            "--scrape-interval",
            "0.5",
            "--cost-scrapes",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "trial 1 metrics off:" in done.stdout
    scrapes = [int(n) for n in re.findall(r"metrics on .* scrapes (\d+)", done.stdout)]
    assert scrapes
    assert scrapes[0] >= 2
    assert "| ratio on/off |" in done.stdout


def test_chaos_smoke_loses_no_byte(tmp_path: Path) -> None:
    output = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "chaos.py"), "--smoke", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(output.read_text())
    assert result["bytes_lost"] == result["bytes_corrupted"] == 0
    assert result["bytes_verified"] > 0
    assert result["server_exit_status"] == {"plain": 0, "tls": 0}
    assert result["server_problems"] == []
    # Every client kind ran, and every chaos action was taken once.
    kinds = {"echo", "tls-echo", "pipelined", "oversize", "reset", "idle", "slowloris"}
    assert kinds | {"bad-proxy"} == set(result["connections"])
    actions = [action["action"] for action in result["chaos_actions"]]
    assert actions[:3] == ["kill-9", "sigstop", "emfile"]
    # The clients a server must close were closed, never echoed (how fast is
    # not asserted: the machine may be loaded).
    outcomes = result["outcomes"]
    for kind in ("oversize", "bad-proxy", "idle"):
        assert "echoed" not in outcomes[kind]
        assert outcomes[kind].get("closed", 0) + outcomes[kind].get("closed-in-time", 0) > 0
    assert sum(result["restarts"].values()) >= 2  # the kill -9 and the SIGSTOP
