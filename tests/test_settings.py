"""``TRIO_ECHO_*`` variables and the configuration logged at start (``_settings``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trio_echo._cli import build_parser, config_from_args
from trio_echo._settings import (
    arguments_from_environment,
    configuration_in_effect,
    env_name,
)

from .conftest import Certificates, StartProcess

README = Path(__file__).parent.parent / "README.md"


def parse(environ: dict[str, str], *argv: str) -> tuple[object, list[str]]:
    parser = build_parser()
    extra, warnings = arguments_from_environment(parser, environ, argv)
    return parser.parse_args([*extra, *argv]), warnings


def test_names_derive_from_the_option() -> None:
    assert env_name("--port") == "TRIO_ECHO_PORT"
    assert env_name("--max-connections-per-ip") == "TRIO_ECHO_MAX_CONNECTIONS_PER_IP"


def test_variables_set_options_and_the_command_line_wins() -> None:
    args, warnings = parse(
        {"TRIO_ECHO_PORT": "7", "TRIO_ECHO_ROUNDS": "3", "TRIO_ECHO_IDLE_TIMEOUT": "500ms"},
        "--port",
        "8",
    )
    assert (args.port, args.rounds, args.idle_timeout) == (8, 3, 0.5)  # type: ignore[attr-defined]
    assert warnings == []


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)]
)
def test_flags_take_true_or_false(value: str, expected: bool) -> None:
    args, _ = parse({"TRIO_ECHO_PROXY_PROTOCOL": value})
    assert args.proxy_protocol is expected  # type: ignore[attr-defined]


def test_fd_takes_a_list_unless_the_command_line_has_one() -> None:
    args, _ = parse({"TRIO_ECHO_FD": "3, 4"})
    assert args.fd == [3, 4]  # type: ignore[attr-defined]
    args, _ = parse({"TRIO_ECHO_FD": "3,4"}, "--fd", "5")
    assert args.fd == [5]  # type: ignore[attr-defined]


def test_unknown_variables_are_warnings_not_errors() -> None:
    _, warnings = parse({"TRIO_ECHO_NOPE": "1", "OTHER": "x"})
    assert warnings == ["ignoring the environment variable TRIO_ECHO_NOPE: no option --nope"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TRIO_ECHO_PORT", "x", "expected an integer, got 'x'"),
        ("TRIO_ECHO_FRAMING", "xml", "invalid choice 'xml' (choose from raw, line)"),
        ("TRIO_ECHO_PROXY_PROTOCOL", "maybe", "expected true or false"),
        ("TRIO_ECHO_GRACE", "soon", "duration"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_variable(
    name: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse({name: value})
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"trio-echo: error: environment variable {name} (for --")
    assert message in last


def test_help_and_version_answer_whatever_the_environment() -> None:
    parser = build_parser()
    assert arguments_from_environment(parser, {"TRIO_ECHO_PORT": "x"}, ["--help"]) == ([], [])


def test_help_and_readme_list_every_variable() -> None:
    parser = build_parser()
    text = re.sub(r"\s+", " ", parser.format_help())
    readme = README.read_text()
    hidden = ("--help", "--version")
    options = [
        action.option_strings[-1]
        for action in parser._actions
        if action.help != "==SUPPRESS==" and action.option_strings[-1] not in hidden
    ]
    assert len(options) > 20
    for option in options:
        assert f"[env: {env_name(option)}]" in text, option
        assert f"`{env_name(option)}`" in readme, option


def test_configuration_in_effect_is_flat_and_has_paths_not_contents(
    certificates: Certificates,
) -> None:
    parser = build_parser()
    args = parser.parse_args(["--certfile", str(certificates.certfile), "--rounds", "2"])
    settings = configuration_in_effect(config_from_args(args), {"workers": 1, "fds": (3,)})
    assert settings["rounds"] == 2
    assert settings["certfile"] == str(certificates.certfile)
    assert settings["fds"] == [3]
    assert "PRIVATE KEY" not in json.dumps(settings)


@pytest.mark.system
def test_the_console_script_reads_variables_and_logs_the_configuration(
    echo_process: StartProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_ECHO_ROUNDS", "1")
    monkeypatch.setenv("TRIO_ECHO_FRAMING", "line")
    monkeypatch.setenv("TRIO_ECHO_PORT", "1")  # --port 0 on the command line wins
    monkeypatch.setenv("TRIO_ECHO_LOG_FORMAT", "json")
    monkeypatch.setenv("TRIO_ECHO_UNHEARD_OF", "1")
    server = echo_process("--rounds", "2")
    with server.connect() as client:
        client.sendall(b"one\ntwo\nthree\n")
        received = b""
        while chunk := client.recv(100):
            received += chunk
    assert received == b"one\ntwo\n"
    events = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    warning = next(e for e in events if e["level"] == "WARNING")
    assert "TRIO_ECHO_UNHEARD_OF" in warning["message"]
    config = next(e for e in events if e["event"] == "config")
    assert (config["rounds"], config["framing"], config["port"]) == (2, "line", 0)
    assert config["message"].startswith("configuration: host=127.0.0.1 port=0 ")
    assert server.stop() == 0
