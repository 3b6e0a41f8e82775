"""UDP and Unix socket options (``trio_echo._cli_transports``): parsing, rules, real clients.

In-process tests call :func:`trio_echo._cli.main`; those with a child process
(marked ``system``) run the real console script against ``socat`` and
``ncat --udp``, as users would.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from trio_echo import UDPConfig
from trio_echo._cli import build_parser, config_from_args

from .conftest import Spawn, StartProcess
from .processes import TRIO_ECHO
from .test_cli import usage_error


def parse(*arguments: str) -> object:
    return config_from_args(build_parser().parse_args(arguments))


@pytest.mark.parametrize(
    ("args", "option", "rule"),
    [
        (["--udp", "--udp-only"], "--udp-only", "not allowed with argument --udp"),
        (["--udp-source-rate", "5"], "--udp-source-rate", "applies only with --udp"),
        (["--udp-global-bytes", "1MiB"], "--udp-global-bytes", "applies only with --udp"),
        (["--udp", "--udp-source-rate", "-1"], "--udp-source-rate", "source_rate"),
        (["--udp", "--udp-source-bytes", "1MB"], "--udp-source-bytes", "use MiB"),
        (["--udp", "--udp-max-sources", "0"], "--udp-max-sources", "max_sources must be >= 1"),
        (["--loss", "5"], "--loss", "applies only to UDP echo"),
        (["--duplicate", "5"], "--duplicate", "applies only to UDP echo"),
        (["--reorder", "2"], "--reorder", "applies only to UDP echo"),
        (["--udp", "--loss", "101"], "--loss", "percentage from 0 to 100"),
        (["--udp", "--duplicate", "-1"], "--duplicate", "percentage from 0 to 100"),
        (["--udp", "--reorder", "0"], "--reorder", "reorder must be >= 1"),
        (["--udp", "--workers", "2"], "--udp", "not allowed with --workers above 1"),
        (["--udp-only", "--workers", "2"], "--udp-only", "not allowed with --workers"),
        (["--unix", "/tmp/x", "--workers", "2"], "--unix", "not allowed with --workers"),
        (["--udp-only", "--rounds", "3"], "--rounds", "--udp-only serves none"),
        (["--udp-only", "--fd", "3"], "--fd", "not allowed with --udp-only"),
        (["--unix-mode", "0660"], "--unix-mode", "unix_mode needs unix"),
        (["--unix", "/tmp/x", "--unix-mode", "rw"], "--unix-mode", "expected octal"),
        (["--unix", "/tmp/x", "--unix-mode", "7777"], "--unix-mode", "unix_mode must be"),
    ],
)
def test_bad_transport_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], option: str, rule: str
) -> None:
    error = usage_error(capsys, *args)
    assert error.startswith(f"trio-echo: error: argument {option}: "), error
    assert rule in error


@pytest.mark.parametrize(
    ("args", "tcp", "udp", "unix"),
    [
        ([], True, None, None),
        (["--udp"], True, UDPConfig(), None),
        (["--udp-only"], False, UDPConfig(), None),
        (["--unix", "/run/e.sock"], False, None, "/run/e.sock"),
        (["--unix", "/run/e.sock", "--port", "7"], True, None, "/run/e.sock"),
        (["--unix", "/run/e.sock", "--host", "::1"], True, None, "/run/e.sock"),
        (["--unix", "/run/e.sock", "--udp"], False, UDPConfig(), "/run/e.sock"),
        (
            ["--udp", "--udp-source-rate", "0", "--udp-global-bytes", "2MiB"],
            True,
            UDPConfig(source_rate=None, global_bytes=2 << 20),
            None,
        ),
        (
            ["--udp", "--udp-source-bytes", "64KiB/s", "--udp-max-sources", "10"],
            True,
            UDPConfig(source_bytes=65536, max_sources=10),
            None,
        ),
    ],
)
def test_which_transports_a_command_line_serves(
    args: list[str], tcp: bool, udp: UDPConfig | None, unix: str | None
) -> None:
    config = config_from_args(build_parser().parse_args(args))
    assert (config.listener.tcp, config.udp, config.listener.unix) == (tcp, udp, unix)


def test_unix_mode_is_octal_and_udp_faults_parse() -> None:
    args = ["--unix", "/x", "--unix-mode", "0660", "--udp", "--loss", "2.5", "--reorder", "3"]
    config = config_from_args(build_parser().parse_args(args))
    assert config.listener.unix_mode == 0o660
    assert (config.connection.faults.loss, config.connection.faults.reorder) == (2.5, 3)


def test_help_documents_the_transport_options_and_defaults() -> None:
    flat = " ".join(build_parser().format_help().split())
    for option in ("--udp", "--udp-only", "--unix PATH", "--unix-mode MODE", "--loss PERCENT"):
        assert option in flat
    assert "--udp-source-rate N" in flat
    assert "(default: 1000)" in flat
    assert "--udp-global-bytes RATE" in flat
    assert "(default: 16777216)" in flat
    assert "never answers source ports 0, 7, 13, 17, 19, 37" in flat


# ---- the real console script with real clients ----


def needs(program: str) -> str:
    path = shutil.which(program)
    if path is None:  # pragma: no cover - installed in CI
        pytest.skip(f"{program} is not installed")
    return path


def test_socat_and_ncat_over_udp(echo_process: StartProcess) -> None:
    server = echo_process("--udp", "--log-format", "json")
    socat = subprocess.run(
        [needs("socat"), "-t", "2", "-", f"UDP:127.0.0.1:{server.port}"],
        input=b"hello over udp\n",
        capture_output=True,
        timeout=10,
    )
    assert socat.stdout == b"hello over udp\n"
    # ncat: write a line, wait (bounded) for the echo, then close its input.
    with subprocess.Popen(
        [needs("ncat"), "--udp", "127.0.0.1", str(server.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as ncat:
        assert ncat.stdin is not None
        assert ncat.stdout is not None
        try:
            ncat.stdin.write(b"ncat says hi\n")
            ncat.stdin.flush()
            ready, _, _ = select.select([ncat.stdout], [], [], 10)
            assert ready, "no echo within 10 s"
            assert os.read(ncat.stdout.fileno(), 100) == b"ncat says hi\n"
        finally:
            ncat.kill()
    assert server.stop() == 0
    shutdown = json.loads(server.wait_for('"event":"shutdown"').string)
    assert shutdown["udp"]["echoed"] == 2
    assert shutdown["udp"]["dropped_by_reason"] == {}


def test_udp_only_serves_no_tcp(echo_process: StartProcess) -> None:
    server = echo_process("--udp-only")
    assert re.search(r"listening on 127\.0\.0\.1:\d+ \(udp\)", server.log)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(b"x" * 70, ("127.0.0.1", server.port))
        assert sock.recv(100) == b"x" * 70
    assert server.stop() == 0


def test_unix_socket_with_socat_mode_and_removal(spawn: Spawn, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    server = spawn([TRIO_ECHO, "--unix", str(path), "--unix-mode", "0660", "--rounds", "1"])
    server.wait_for(f"listening on unix:{re.escape(str(path))}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    socat = subprocess.run(
        [needs("socat"), "-", f"UNIX-CONNECT:{path}"],
        input=b"over a unix socket\n",
        capture_output=True,
        timeout=10,
    )
    assert socat.stdout == b"over a unix socket\n"
    server.wait_for(r"closed unix:\S+: rounds=1 .* reason=rounds")
    # A second server on the same, live path: one line, exit 1; the file stays.
    second = subprocess.run(
        [TRIO_ECHO, "--unix", str(path)], capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert second.stderr == (
        f"trio-echo: error: cannot listen on unix:{path}: {path} is in use by a live server\n"
    )
    assert path.exists()
    server.signal(signal.SIGTERM)
    status, _ = server.finish()
    assert status == 0
    assert not path.exists()


def test_a_stale_socket_file_is_replaced_at_start(spawn: Spawn, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    # A server killed without its clean-up leaves its file behind.
    first = spawn([TRIO_ECHO, "--unix", str(path)])
    first.wait_for("listening on unix:")
    first.kill()
    assert path.exists()
    second = spawn([TRIO_ECHO, "--unix", str(path)])
    second.wait_for("listening on unix:")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"again")
        assert sock.recv(100) == b"again"
    second.signal(signal.SIGTERM)
    assert second.finish()[0] == 0
