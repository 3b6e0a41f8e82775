"""``trio-echo bench`` on the command line (trio_echo._bench.cli): usage errors
in process; runs as the real console script against trio-echo, socat, ncat and
an asyncio server (system tests)."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_echo._cli import main

from .conftest import Certificates, StartProcess
from .processes import TRIO_ECHO

# ---- arguments (in process) ----


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        (["127.0.0.1"], "ADDRESS"),
        (["[::1]:x"], "ADDRESS"),
        (["h:7", "--connections", "0"], "--connections"),
        (["h:7", "--pipeline", "two"], "--pipeline"),
        (["h:7", "--rate", "fast"], "--rate"),
        (["h:7", "--rate", "-5"], "--rate"),
        (["h:7", "--count", "0"], "--count"),
        (["h:7", "--interval", "0"], "--interval"),
        (["h:7", "--size", "1KB"], "--size"),
        (["h:7", "--size", "0"], "--size"),
        (["h:7", "--duration", "5m"], "--duration"),
        (["h:7", "--warmup", "-1s"], "--warmup"),
        (["h:7", "--timeout", "0"], "--timeout"),
        (["h:7", "--send-proxy", "v3"], "--send-proxy"),
        (["unix:/run/echo.sock", "--udp"], "--udp"),
        (["h:7", "--udp", "--tls"], "--tls"),
        (["h:7", "--udp", "--connect-only"], "--connect-only"),
        (["h:7", "--udp", "--send-proxy", "v2"], "--send-proxy"),
        (["h:7", "--udp", "--size", "8"], "--size"),
        (["h:7", "--rate", "100", "--pipeline", "4"], "--pipeline"),
        (["h:7", "--interval", "1s", "--connections", "2"], "--interval"),
        (["h:7", "--cafile", "ca.pem"], "--cafile"),
        (["h:7", "--insecure"], "--insecure"),
        (["h:7", "--tls", "--cafile", "/nonexistent/ca.pem"], "--cafile"),
        (["h:7", "--hgrm", "/nonexistent/dir/out.hgrm"], "--hgrm"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_option(
    arguments: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", *arguments])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"trio-echo bench: error: argument {option}"), error


def test_help_names_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: trio-echo bench")
    for option in ("--connections", "--pipeline", "--rate", "--count", "--interval",
                   "--connect-only", "--size", "--duration", "--warmup", "--tls",
                   "--cafile", "--insecure", "--send-proxy", "--json", "--hgrm"):  # fmt: skip
        assert option in text


def test_the_server_command_line_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    # A server option where "bench" would be: still the server's parser.
    with pytest.raises(SystemExit):
        main(["--port", "bench"])
    assert capsys.readouterr().err.startswith("usage: trio-echo [")


# ---- the console script against real servers (system) ----


def bench(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRIO_ECHO, "bench", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def bench_on_a_terminal(*arguments: str) -> str:
    """Run ``trio-echo bench`` with its stdout on a pseudo-terminal; what it wrote there."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [TRIO_ECHO, "bench", *arguments],
            stdout=terminal,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        os.close(terminal)
        written = b""
        # Read until the process has exited and closed its end (EIO on Linux).
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            written += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
    return written.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except ConnectionRefusedError:
            if process.poll() is not None:
                raise AssertionError(
                    f"{process.args!r} exited with {process.returncode}"
                ) from None
            subprocess.run(["sleep", "0.02"], check=True)
    raise AssertionError(f"nothing listening on {port}")


@pytest.fixture
def third_party() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Echo servers of other programs; each is killed (by PID) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


# An asyncio echo server; with "corrupt", the echo of each connection's byte 0 is wrong.
ASYNCIO_ECHO = """
import asyncio, sys
async def echo(reader, writer):
    first = sys.argv[2:] == ["corrupt"]
    while data := await reader.read(65536):
        if first:
            data, first = bytes([data[0] ^ 1]) + data[1:], False
        writer.write(data)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def start_echo(kind: str, third_party: list[subprocess.Popen[bytes]]) -> int:
    port = free_port()
    commands = {
        "socat": ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", "PIPE"],
        "ncat": ["ncat", "-l", "-k", "127.0.0.1", str(port), "--exec", "/bin/cat"],
        "asyncio": [sys.executable, "-c", ASYNCIO_ECHO, str(port)],
        "corrupting": [sys.executable, "-c", ASYNCIO_ECHO, str(port), "corrupt"],
    }
    command = commands[kind]
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third_party.append(process)
    wait_listening(port, process)
    return port


JSON_KEYS = {"round_trips", "rate", "bytes", "latency_us", "connect_us", "errors"}
PERCENTILES = {"min", "p50", "p90", "p99", "p999", "max"}


def check_json(stdout: str, round_trips: int, size: int) -> dict[str, object]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    report = json.loads(lines[0])
    assert set(report) >= JSON_KEYS
    assert report["round_trips"] == round_trips
    assert report["bytes"] == round_trips * size
    assert isinstance(report["rate"], float | int)
    assert report["rate"] > 0
    for key in ("latency_us", "connect_us"):
        assert set(report[key]) == PERCENTILES
        assert 0 < report[key]["min"] <= report[key]["p50"] <= report[key]["max"]
    assert report["errors"] == {}
    return dict(report)


@pytest.mark.system
@pytest.mark.parametrize("kind", ["socat", "ncat", "asyncio"])
def test_against_other_echo_servers(kind: str, third_party: list[subprocess.Popen[bytes]]) -> None:
    port = start_echo(kind, third_party)
    done = bench(f"127.0.0.1:{port}", "--connections", "2", "--count", "100", "--size", "1KiB",
                 "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    check_json(done.stdout, 100, 1024)


@pytest.mark.system
def test_against_trio_echo_with_every_output(echo_process: StartProcess, tmp_path: Path) -> None:
    server = echo_process()
    hgrm = tmp_path / "latency.hgrm"
    done = bench(f"127.0.0.1:{server.port}", "--count", "200", "--pipeline", "2",
                 "--hgrm", str(hgrm))  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Not a terminal: no live line, only the summary.
    assert "\r" not in done.stdout
    assert re.search(r"^round trips  200 \(", done.stdout, re.M), done.stdout
    assert re.search(r"^latency      min \d+\.\d+  p50 .* p99\.9 .* max .* ms$", done.stdout, re.M)
    assert re.search(r"^errors       none$", done.stdout, re.M)
    text = hgrm.read_text()
    assert text.startswith("       Value     Percentile TotalCount 1/(1-Percentile)\n\n")
    assert re.search(r"^ +\d+\.\d+ 1\.000000000000 +200$", text, re.M)


@pytest.mark.system
@pytest.mark.parametrize("udp", [[], ["--udp"]])
def test_on_a_terminal_a_live_line_is_redrawn_then_cleared_for_the_summary(
    udp: list[str], echo_process: StartProcess
) -> None:
    server = echo_process("--udp", "--udp-source-rate", "0", "--udp-global-rate", "0")
    # The live line is drawn every 0.5 s: three times or so in 2 s.
    written = bench_on_a_terminal(f"127.0.0.1:{server.port}", "--duration", "2s", *udp)
    live, _, summary = written.rpartition("\r\x1b[K")
    redraws = re.findall(
        r"\r\x1b\[K +\d+\.\d s +[\d,]+ round trips +[\d,]+/s  p99 [\d.]+ ms", live
    )
    assert len(redraws) >= 2, written
    assert "".join(redraws) == live  # nothing else, no newline
    assert summary.startswith("--- 127.0.0.1:")
    assert "round trips  " in summary


@pytest.mark.system
def test_on_a_terminal_json_and_ping_have_no_live_line(echo_process: StartProcess) -> None:
    server = echo_process()
    address = f"127.0.0.1:{server.port}"
    written = bench_on_a_terminal(address, "--duration", "1200ms", "--json")
    assert "\r\x1b[K" not in written
    assert json.loads(written)["round_trips"] > 0
    pinged = bench_on_a_terminal(address, "--interval", "300ms", "--count", "4")
    assert "\x1b[K" not in pinged
    assert pinged.startswith("seq=1 bytes=64 time=")


@pytest.mark.system
def test_ping_prints_one_line_per_round_trip_then_the_summary(
    echo_process: StartProcess,
) -> None:
    server = echo_process()
    done = bench(f"127.0.0.1:{server.port}", "--interval", "10ms", "--count", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for number, line in enumerate(lines[:3], start=1):
        assert re.fullmatch(rf"seq={number} bytes=64 time=\d+\.\d{{3}} ms", line), line
    assert lines[3].startswith(f"--- 127.0.0.1:{server.port} trio-echo bench: ping")


@pytest.mark.system
def test_tls_and_proxy_protocol(echo_process: StartProcess, certificates: Certificates) -> None:
    server = echo_process("--certfile", str(certificates.certfile),
                          "--keyfile", str(certificates.keyfile), "--proxy-protocol")  # fmt: skip
    done = bench(f"127.0.0.1:{server.port}", "--tls", "--cafile", str(certificates.ca_file),
                 "--send-proxy", "v2", "--count", "20", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    check_json(done.stdout, 20, 64)


@pytest.mark.system
def test_connect_only_reports_connections(echo_process: StartProcess) -> None:
    server = echo_process()
    done = bench(f"127.0.0.1:{server.port}", "--connect-only", "--count", "50", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["connects"] == 50
    assert report["rate"] > 0
    assert report["connect_us"]["p50"] > 0


@pytest.mark.system
@pytest.mark.parametrize("mode", [[], ["--rate", "1000"], ["--interval", "1ms"]])
def test_a_corrupted_echo_exits_1_naming_connection_offset_and_bytes(
    mode: list[str], third_party: list[subprocess.Popen[bytes]]
) -> None:
    port = start_echo("corrupting", third_party)
    done = bench(f"127.0.0.1:{port}", "--count", "10", *mode)
    assert done.returncode == 1
    # Connection 0's stream starts with "!"; the server flipped its lowest bit.
    assert done.stderr == (
        "trio-echo bench: connection 0: byte 0: expected 0x21 (!), received 0x20 (' ')\n"
    )
    assert "errors       mismatch 1" in done.stdout


@pytest.mark.system
def test_an_unreachable_server_exits_1_with_one_line() -> None:
    port = free_port()
    done = bench(f"127.0.0.1:{port}", "--count", "1")
    assert done.returncode == 1
    assert (
        done.stderr == f"trio-echo bench: cannot connect to 127.0.0.1:{port}: Connection refused\n"
    )
    assert done.stdout == ""
