"""Process roles and signals (``_roles``, ``_signals``): serving until a signal, start-up errors.

The supervisor and its workers are ``test_workers.py``'s; serving on inherited
sockets is ``test_activation.py``'s.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from trio_echo._signals import dispatch_signals

from .conftest import StartProcess
from .processes import TRIO_ECHO, fill_both_directions, read_until_eof


async def test_first_signal_is_graceful_every_later_one_immediate() -> None:
    async def received() -> AsyncIterator[int]:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            yield signum

    calls: list[tuple[str, signal.Signals]] = []
    await dispatch_signals(
        received(),
        graceful=lambda signum: calls.append(("graceful", signum)),
        immediate=lambda signum: calls.append(("immediate", signum)),
    )
    assert calls == [
        ("graceful", signal.SIGTERM),
        ("immediate", signal.SIGINT),
        ("immediate", signal.SIGTERM),
    ]


# ---- the single process, run as the real console script ----


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


def test_second_sigint_stops_at_once(echo_process: StartProcess) -> None:
    server = echo_process("--grace", "60s")
    with server.connect() as client:
        fill_both_directions(client)
        server.proc.send_signal(signal.SIGINT)
        server.wait_for(re.compile("shutting down"))
        started = time.monotonic()
        status, log = server.stop(signal.SIGINT), server.log
    assert status == 0
    assert time.monotonic() - started < 5
    assert "received again: stopping now" in log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_signals_after_the_shutdown_change_nothing(
    echo_process: StartProcess, signum: signal.Signals, workers: str
) -> None:
    # The same signal again right after the "stopped:" line, several times: the
    # process must still exit 0, with no KeyboardInterrupt anywhere (not even in
    # logging.shutdown at exit).  Repeated, because the window is short.
    for _ in range(5 if workers == "1" else 2):
        server = echo_process("--workers", workers)
        server.proc.send_signal(signum)
        server.wait_for(re.compile("stopped: "))
        for _ in range(3):
            server.proc.send_signal(signum)
        status, log = server.finish()
        assert status == 0, log
        assert "Traceback" not in log
        assert "Exception ignored" not in log


# ---- start-up errors: one line, exit 1, JSON with --log-format json ----


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def run_failing(*arguments: str) -> str:
    """Run the console script, which must fail to start (exit 1); return its stderr."""
    result = subprocess.run([TRIO_ECHO, *arguments], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.system
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "supervisor"])
def test_address_in_use_is_one_line_and_exit_1(taken_port: int, workers: list[str]) -> None:
    assert run_failing("--port", str(taken_port), *workers) == (
        f"trio-echo: error: cannot listen on 127.0.0.1:{taken_port}: Address already in use\n"
    )


@pytest.mark.system
def test_missing_tls_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    assert run_failing("--port", "0", "--certfile", str(missing)) == (
        f"trio-echo: error: cannot load TLS files: certfile '{missing}': "
        "No such file or directory\n"
    )


@pytest.mark.system
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port", "{port}"], "cannot listen on 127.0.0.1:{port}: Address already in use"),
        (["--port", "{port}", "--workers", "2"], "cannot listen on 127.0.0.1:{port}: Address"),
        (["--port", "0", "--certfile", "/nonexistent.pem"], "cannot load TLS files: certfile"),
        (["--fd", "987"], "cannot serve on inherited sockets: fd 987: Bad file descriptor"),
    ],
)
def test_start_up_errors_are_json_lines_with_log_format_json(
    taken_port: int, arguments: list[str], message: str
) -> None:
    stderr = run_failing(*(a.format(port=taken_port) for a in arguments), "--log-format", "json")
    (line,) = stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["event"]) == ("ERROR", "error")
    assert record["message"].startswith(message.format(port=taken_port))
