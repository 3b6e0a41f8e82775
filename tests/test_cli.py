"""The real ``trio-echo`` console script, run as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import trio_echo

from .conftest import StartProcess
from .processes import TRIO_ECHO, read_until_eof


def recv_until_reset(sock: socket.socket) -> list[bytes]:
    """What each receive returned before the connection was reset."""
    chunks = []
    try:
        while chunk := sock.recv(100):
            chunks.append(chunk)
    except ConnectionResetError:
        return chunks
    pytest.fail(f"clean EOF after {chunks} instead of a reset")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_gracefully_and_exits_zero(
    echo_process: StartProcess, signum: signal.Signals
) -> None:
    server = echo_process("--framing", "line")
    with server.connect() as client:
        client.sendall(b"hello\nwor")
        assert client.recv(100) == b"hello\n"
        server.proc.send_signal(signum)
        # The partial line already read is echoed, then a clean EOF.
        assert read_until_eof(client) == b"wor"
    status, log = server.finish()
    assert status == 0
    assert f"{signum.name} received" in log
    assert re.search(r"stopped: 1 connections, 2 rounds, 9 bytes in, 9 bytes out", log)
    assert "reason=shutdown" in log
    assert "Traceback" not in log


def test_rounds_close_is_logged_per_connection(echo_process: StartProcess) -> None:
    server = echo_process("--rounds", "3", "--framing", "line")
    with server.connect() as client:
        client_port = client.getsockname()[1]
        client.sendall(b"a\nb\nc\nd\ne\n")
        assert read_until_eof(client) == b"a\nb\nc\n"
    match = server.wait_for(re.compile(r"closed (\S+): rounds=(\d+) .*duration=\S+ reason=(\S+)"))
    assert match.group(2, 3) == ("3", "rounds")
    assert match.group(1) == f"127.0.0.1:{client_port}"
    assert server.stop() == 0


def test_second_sigint_stops_at_once(echo_process: StartProcess) -> None:
    server = echo_process("--grace", "60")
    with server.connect() as client:
        client.setblocking(False)
        # Fill both directions: the server blocks sending an echo nobody reads.
        try:
            for _ in range(10_000):
                client.send(b"x" * 65536)
        except BlockingIOError:
            pass
        server.proc.send_signal(signal.SIGINT)
        server.wait_for(re.compile("shutting down"))
        started = time.monotonic()
        status, log = server.stop(signal.SIGINT), server.log
    assert status == 0
    assert time.monotonic() - started < 5
    assert "received again: stopping now" in log


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--port", "70000"], "--port"),
        (["--rounds", "0"], "--rounds"),
        (["--rounds", "-1"], "--rounds"),
        (["--framing", "xml"], "--framing"),
        (["--idle-timeout", "-1"], "--idle-timeout"),
        (["--grace", "-1"], "--grace"),
        (["--max-message", "0"], "--max-message"),
        (["--max-connections", "0"], "--max-connections"),
        (["--port", "eighty"], "--port"),
        (["--log-level", "loud"], "--log-level"),
        (["--latency", "5parsecs"], "--latency"),
        (["--latency=-1ms"], "--latency"),
        (["--latency", "10ms", "--jitter", "20ms"], "--jitter"),
        (["--fragment", "0"], "--fragment"),
        (["--fragment", "1.5"], "--fragment"),
        (["--fragment-delay", "5ms"], "--fragment-delay"),
        (["--fragment", "1", "--fragment-delay", "soon"], "--fragment-delay"),
        (["--bandwidth", "0"], "--bandwidth"),
        (["--bandwidth", "64KB"], "--bandwidth"),
        (["--stall-after", "lots"], "--stall-after"),
        (["--reset-after", "1MB"], "--reset-after"),
        (["--seed", "x"], "--seed"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], option: str) -> None:
    result = subprocess.run([TRIO_ECHO, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: trio-echo")
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"trio-echo: error: argument {option}")
    assert "Traceback" not in result.stderr


def test_faults_from_the_command_line_latency_fragment_reset(
    echo_process: StartProcess,
) -> None:
    server = echo_process(
        *("--latency", "50ms", "--jitter", "10ms", "--seed", "7"),
        *("--fragment", "1", "--fragment-delay", "5ms", "--reset-after", "10"),
    )
    with server.connect() as client:
        client.sendall(b"0123456789abcdefghij")
        chunks = recv_until_reset(client)
    assert b"".join(chunks) == b"0123456789"
    # One byte per send, 5 ms apart: the client sees the pieces separately.
    assert len(chunks) > 1
    match = server.wait_for(re.compile(r"reason=(\S+) faults=(\S+)"))
    assert match.group(1, 2) == ("reset-injected", "fragment:10,latency:1,reset:1")
    status, log = server.stop(), server.log
    assert status == 0
    assert (
        "faults on: latency=0.05 jitter=0.01 fragment=1 fragment_delay=0.005 reset_after=10 "
        "seed=7" in log
    )


def test_faults_from_the_command_line_bandwidth_stall(
    echo_process: StartProcess,
) -> None:
    server = echo_process(
        *("--bandwidth", "64KiB/s", "--stall-after", "1KiB", "--idle-timeout", "0.5"),
        *("--latency", "10ms", "--jitter", "5ms"),
    )
    with server.connect() as client:
        client.sendall(bytes(4096))
        assert read_until_eof(client) == bytes(1024)
    match = server.wait_for(re.compile(r"bytes_out=(\d+) .*reason=(\S+) faults=(\S+)"))
    assert match.group(1, 2) == ("1024", "stalled")
    assert re.fullmatch(r"bandwidth:\d+,latency:1,stall:1", match.group(3))
    status, log = server.stop(), server.log
    assert status == 0
    # Without --seed the server draws one and logs it, to replay the run.
    assert re.search(
        r"faults on: latency=0.01 jitter=0.005 bandwidth=65536 stall_after=1024 seed=\d+\n", log
    )


def test_address_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [TRIO_ECHO, "--port", str(port)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"trio-echo: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_version_from_script_and_module() -> None:
    for command in ([TRIO_ECHO], [sys.executable, "-m", "trio_echo"]):
        result = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0
        assert result.stdout == f"trio-echo {trio_echo.__version__}\n"


def test_help_lists_every_option() -> None:
    result = subprocess.run([TRIO_ECHO, "--help"], capture_output=True, text=True, timeout=30)
    options = set(re.findall(r"--[a-z-]+", result.stdout))
    assert {
        "--host",
        "--port",
        "--rounds",
        "--framing",
        "--max-message",
        "--max-connections",
        "--idle-timeout",
        "--grace",
        "--log-level",
        "--version",
        "--latency",
        "--jitter",
        "--fragment",
        "--fragment-delay",
        "--bandwidth",
        "--stall-after",
        "--reset-after",
        "--seed",
        "--workers",
        "--fd",
        "--proxy-protocol",
        "--proxy-timeout",
    } <= options
    assert "--worker-of" not in options


def test_main_in_process_builds_config_errors_as_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trio_echo._cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "-5"])
    assert exit_info.value.code == 2
    assert "argument --port: port must be between 0 and 65535" in capsys.readouterr().err


def test_environment_has_console_script() -> None:
    assert os.access(TRIO_ECHO, os.X_OK), TRIO_ECHO
