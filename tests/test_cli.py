"""The command line (``trio_echo._cli``): the parser, arguments to config, usage errors.

Most tests call :func:`trio_echo._cli.main` in this process (a usage error
exits before anything starts); those marked ``system`` run the real console
script.  Running the server a command line describes is ``test_roles.py``'s.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

import trio_echo
from trio_echo import Faults
from trio_echo._cli import build_parser, config_from_args, main, options_from_args

from .conftest import StartProcess
from .processes import TRIO_ECHO, read_until_eof


def parse(*arguments: str) -> trio_echo.ServerConfig:
    return config_from_args(build_parser().parse_args(arguments))


def usage_error(capsys: pytest.CaptureFixture[str], *arguments: str) -> str:
    """Run ``main(arguments)``, which must exit 2; return its last stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(arguments))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: trio-echo")
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "option", "rule"),
    [
        (["--port", "70000"], "--port", "port must be between 0 and 65535"),
        (["--port", "-5"], "--port", "port must be between 0 and 65535"),
        (["--port", "eighty"], "--port", "invalid int value"),
        (["--rounds", "0"], "--rounds", "rounds"),
        (["--rounds", "-1"], "--rounds", "rounds"),
        (["--framing", "xml"], "--framing", "invalid choice"),
        (["--idle-timeout", "-1"], "--idle-timeout", "must not be negative"),
        (["--idle-timeout", "5parsecs"], "--idle-timeout", "unknown unit 'parsecs'"),
        (["--grace", "-1"], "--grace", "must not be negative"),
        (["--max-message", "0"], "--max-message", "max_message"),
        (["--max-message", "64KB"], "--max-message", "use KiB"),
        (["--max-connections", "0"], "--max-connections", "max_connections"),
        (["--log-level", "loud"], "--log-level", "invalid choice"),
        (["--log-format", "xml"], "--log-format", "invalid choice"),
        (["--workers", "0"], "--workers", "workers must be >= 1, got 0"),
        (["--workers", "two"], "--workers", "invalid int value"),
        (["--fd", "three"], "--fd", "expected a descriptor number, got 'three'"),
        (["--fd", "-1"], "--fd", "a descriptor number is >= 0, got -1"),
        (["--fd", "3", "--port", "80"], "--fd", "not allowed with --host or --port"),
        (["--worker-of", "x"], "--worker-of", "expected PID:NUMBER"),
        (["--worker-timeout", "-1"], "--worker-timeout", "must not be negative"),
        (["--worker-timeout", "10min"], "--worker-timeout", "unknown unit 'min'"),
        (["--stats-interval", "0"], "--stats-interval", "must be a duration > 0"),
        (["--stats-interval", "-1"], "--stats-interval", "must not be negative"),
        (["--stats-interval", "inf"], "--stats-interval", "invalid duration 'inf'"),
        (["--proxy-timeout", "2s"], "--proxy-timeout", "applies only with --proxy-protocol"),
        (["--proxy-protocol", "--proxy-timeout", "0"], "--proxy-timeout", "proxy_timeout"),
        (["--proxy-protocol", "--proxy-timeout", "nan"], "--proxy-timeout", "invalid duration"),
        (["--keyfile", "key.pem"], "--certfile", "certfile is required by --keyfile"),
        (["--tls-client-ca", "ca.pem"], "--certfile", "certfile is required by --keyfile"),
        (["--tls-handshake-timeout", "5s"], "--certfile", "and --tls-handshake-timeout"),
        (
            ["--certfile", "c", "--tls-handshake-timeout", "0"],
            "--tls-handshake-timeout",
            "handshake",
        ),
        (
            ["--certfile", "c", "--tls-handshake-timeout", "nan"],
            "--tls-handshake-timeout",
            "'nan'",
        ),
        (
            ["--latency", "5parsecs"],
            "--latency",
            "unknown unit 'parsecs' in '5parsecs': use ms or s",
        ),
        (["--latency=-1ms"], "--latency", "must not be negative"),
        (["--latency", "10ms", "--jitter", "20ms"], "--jitter", "jitter"),
        (["--fragment", "0"], "--fragment", "fragment"),
        (["--fragment", "1.5"], "--fragment", "not a whole number of bytes"),
        (["--fragment-delay", "5ms"], "--fragment-delay", "fragment_delay"),
        (["--fragment", "1", "--fragment-delay", "soon"], "--fragment-delay", "invalid duration"),
        (["--bandwidth", "0"], "--bandwidth", "bandwidth"),
        (["--bandwidth", "64KB"], "--bandwidth", "use KiB"),
        (["--stall-after", "lots"], "--stall-after", "invalid size 'lots'"),
        (["--reset-after", "1MB"], "--reset-after", "use MiB"),
        (["--seed", "x"], "--seed", "invalid int value"),
        # ---- issue 17 ----
        (["--slow-close", "1week"], "--slow-close", "unknown unit 'week'"),
        (["--timeout", "later"], "--timeout", "invalid duration 'later'"),
        (["--limit-data", "1KB"], "--limit-data", "use KiB"),
        (["--read-bandwidth", "0"], "--read-bandwidth", "read_bandwidth"),
        (["--toxicity", "1.5"], "--toxicity", "a probability is from 0 to 1, got 1.5"),
        (["--toxicity", "half"], "--toxicity", "expected a probability from 0 to 1"),
        (["--target-cidr", "10.0.0.0/33"], "--target-cidr", "'10.0.0.0/33' is not a network"),
        (["--target-connection", "0"], "--target-connection", "a connection number >= 1"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_option_and_rule(
    capsys: pytest.CaptureFixture[str], args: list[str], option: str, rule: str
) -> None:
    error = usage_error(capsys, *args)
    assert error.startswith(f"trio-echo: error: argument {option}: "), error
    assert rule in error


def test_workers_without_so_reuseport_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    assert "argument --workers: needs SO_REUSEPORT" in usage_error(capsys, "--workers", "2")


@pytest.mark.parametrize(
    ("args", "field", "value"),
    [
        (["--idle-timeout", "30s"], ("connection", "idle_timeout"), 30.0),
        (["--idle-timeout", "250ms"], ("connection", "idle_timeout"), 0.25),
        (["--idle-timeout", "30"], ("connection", "idle_timeout"), 30.0),
        (["--idle-timeout", "0"], ("connection", "idle_timeout"), None),
        (["--grace", "500ms"], ("listener", "grace"), 0.5),
        (["--grace", "0"], ("listener", "grace"), 0.0),
        (["--proxy-protocol", "--proxy-timeout", "2s"], ("listener", "proxy_timeout"), 2.0),
        (["--proxy-protocol"], ("listener", "proxy_timeout"), 3.0),
        (
            ["--certfile", "c.pem", "--tls-handshake-timeout", "5s"],
            ("tls", "handshake_timeout"),
            5,
        ),
        (["--certfile", "c"], ("tls", "handshake_timeout"), 10),
        (["--certfile", "c", "--keyfile", "k"], ("tls", "keyfile"), "k"),
        (["--max-message", "64KiB"], ("connection", "max_message"), 65536),
        (["--max-message", "1000"], ("connection", "max_message"), 1000),
        (["--host", "*"], ("listener", "host"), None),
        (["--host", ""], ("listener", "host"), None),
        (["--host", "::1"], ("listener", "host"), "::1"),
        (["--port", "0"], ("listener", "port"), 0),
    ],
)
def test_durations_and_sizes_take_units_or_plain_numbers(
    args: list[str], field: tuple[str, str], value: object
) -> None:
    part, name = field
    assert getattr(getattr(parse(*args), part), name) == value


def test_issue_17_fault_options_set_the_faults() -> None:
    faults = parse(
        "--slow-close", "250ms", "--timeout", "never", "--limit-data", "1KiB",
        "--read-bandwidth", "64KiB/s", "--toxicity", "0.25", "--target-cidr",
        "10.0.0.0/8, ::1", "--target-connection", "3", "--seed", "9",
    ).connection.faults  # fmt: skip
    assert faults == Faults(
        slow_close=0.25,
        timeout=0.0,
        limit_data=1024,
        read_bandwidth=65536,
        toxicity=0.25,
        target_cidr=("10.0.0.0/8", "::1"),
        target_connection=3,
        seed=9,
    )
    assert parse("--timeout", "30s").connection.faults.timeout == 30
    assert parse().connection.faults == Faults()


def test_stats_interval_and_fds_are_process_options() -> None:
    parser = build_parser()
    arguments = ["--stats-interval", "1s", "--fd", "3", "--fd", "4", "--log-format", "json"]
    options = options_from_args(parser, parser.parse_args(arguments), arguments)
    assert (options.stats_interval, options.fds, options.log_format) == (1.0, (3, 4), "json")
    assert options.arguments == tuple(arguments)
    assert (options.workers, options.worker_of) == (1, None)


def test_help_lists_every_option_with_its_units() -> None:
    text = build_parser().format_help()
    options = set(re.findall(r"--[a-z-]+", text))
    assert {
        *("--host", "--port", "--fd", "--workers", "--rounds", "--framing"),
        *("--max-message", "--max-connections", "--idle-timeout", "--grace"),
        *("--proxy-protocol", "--proxy-timeout", "--certfile", "--keyfile", "--tls-client-ca"),
        *("--tls-handshake-timeout", "--stats-interval", "--log-level", "--log-format"),
        *("--latency", "--jitter", "--fragment", "--fragment-delay", "--bandwidth"),
        *("--stall-after", "--reset-after", "--seed", "--version"),
    } <= options
    assert "--worker-of" not in options
    assert "--heartbeat-fd" not in options
    assert "--worker-timeout DURATION" in " ".join(text.split())
    flat = " ".join(text.split())
    assert "per worker" in flat
    assert "--workers N" in flat
    for option in ("--idle-timeout", "--grace", "--proxy-timeout", "--stats-interval"):
        assert f"{option} DURATION" in flat
    assert "--max-message SIZE" in flat


def test_environment_has_console_script() -> None:
    assert os.access(TRIO_ECHO, os.X_OK), TRIO_ECHO


# ---- the real console script ----


@pytest.mark.system
def test_version_from_script_and_module() -> None:
    for command in ([TRIO_ECHO], [sys.executable, "-m", "trio_echo"]):
        result = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0
        assert result.stdout == f"trio-echo {trio_echo.__version__}\n"


@pytest.mark.system
@pytest.mark.parametrize("arguments", [["--version"], ["--help"], ["--port", "-5"]])
def test_answers_without_importing_trio(arguments: list[str]) -> None:
    probe = (
        "import sys\n"
        "from trio_echo._cli import main\n"
        "try:\n"
        f"    main({arguments!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.splitlines()[-1] == "[]", result.stderr


@pytest.mark.system
def test_console_script_usage_error_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [TRIO_ECHO, "--stats-interval", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: trio-echo")
    assert result.stderr.splitlines()[-1] == (
        "trio-echo: error: argument --stats-interval: "
        "must be a duration > 0, like 1s or 500ms; got '0'"
    )


def recv_until_reset(sock: socket.socket) -> list[bytes]:
    """What each receive returned before the connection was reset."""
    chunks = []
    try:
        while chunk := sock.recv(100):
            chunks.append(chunk)
    except ConnectionResetError:
        return chunks
    pytest.fail(f"clean EOF after {chunks} instead of a reset")


def test_fault_options_reach_the_server_latency_fragment_reset(
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


def test_fault_options_reach_the_server_bandwidth_stall(echo_process: StartProcess) -> None:
    server = echo_process(
        *("--bandwidth", "64KiB/s", "--stall-after", "1KiB", "--idle-timeout", "500ms"),
        *("--latency", "10ms", "--jitter", "5ms"),
    )
    with server.connect() as client:
        client.sendall(bytes(4096))
        assert read_until_eof(client) == bytes(1024)
    match = server.wait_for(re.compile(r"bytes_out=(\d+) .*reason=(\S+) faults=(\S+)"))
    assert match.group(1, 2) == ("1024", "stalled")
    assert re.fullmatch(r"bandwidth:\d+,latency:1,stall:1", match.group(3))
    status, log = server.stop(signal.SIGTERM), server.log
    assert status == 0
    # Without --seed the server draws one and logs it, to replay the run.
    assert re.search(
        r"faults on: latency=0.01 jitter=0.005 bandwidth=65536 stall_after=1024 seed=\d+\n", log
    )
