"""The operations options (``_cli_ops``): ``--metrics`` addresses, usage errors, config."""

from __future__ import annotations

import importlib.util

import pytest

from trio_echo import _cli_ops
from trio_echo._cli import build_parser, config_from_args, main
from trio_echo._cli_ops import check_metrics_available, parse_endpoint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        ("0", ("127.0.0.1", 0)),
        ("127.0.0.2:9100", ("127.0.0.2", 9100)),
        (":9100", (None, 9100)),
        ("*:9100", (None, 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("localhost:9100", ("localhost", 9100)),
    ],
)
def test_metrics_endpoints(text: str, expected: tuple[str | None, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected HOST:PORT or PORT"),
        ("host", "expected HOST:PORT or PORT"),
        ("host:port", "expected HOST:PORT or PORT"),
        ("70000", "a port is between 0 and 65535"),
        ("::1:9100", "write an IPv6 address in brackets"),
        ("[nope]:9100", "not an IPv6 address in brackets"),
    ],
)
def test_bad_metrics_endpoints(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoint(text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "x:y"], "argument --metrics: expected HOST:PORT or PORT"),
        (["--proxy-trusted", "10.0.0.0/8"], "argument --proxy-trusted: proxy_trusted applies "),
        (
            ["--proxy-protocol", "--proxy-trusted", "10.0.0.0/40"],
            "argument --proxy-trusted: '10.0.0.0/40' is not a network",
        ),
        (["--max-connections-per-ip", "0"], "argument --max-connections-per-ip: "),
        (["--connection-rate-per-ip", "-1"], "argument --connection-rate-per-ip: expected "),
        (["--tls-min-version", "1.1"], "argument --tls-min-version: invalid choice"),
        (["--tls-min-version", "1.3"], "certfile is required by"),
        (["--hello", "{who}"], "argument --hello: hello has an unknown placeholder {who}"),
    ],
)
def test_usage_errors_name_the_option(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("trio-echo: error: ")
    assert message in last


def test_the_options_reach_the_config() -> None:
    args = build_parser().parse_args(
        [
            "--proxy-protocol",
            "--proxy-trusted",
            "10.0.0.0/8, 192.0.2.7",
            "--max-connections-per-ip",
            "5",
            "--connection-rate-per-ip",
            "2.5/s",
            "--certfile",
            "cert.pem",
            "--tls-min-version",
            "1.3",
            "--hello",
            r"hi {port}\n",
        ]
    )
    config = config_from_args(args)
    assert config.listener.proxy_trusted == ("10.0.0.0/8", "192.0.2.7")
    assert config.listener.max_connections_per_ip == 5
    assert config.listener.connection_rate_per_ip == 2.5
    assert config.tls is not None
    assert config.tls.min_version == "1.3"
    assert config.connection.hello == "hi {port}\n"
    assert config.worker == 0


def test_metrics_without_the_extra_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "prometheus_client" else real(name, *a),
    )
    assert check_metrics_available() == _cli_ops.METRICS_EXTRA
    with pytest.raises(SystemExit) as exit_:
        main(["--metrics", "9100"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "trio-echo: error: argument --metrics: --metrics needs h11 and prometheus_client: "
        "pip install 'trio-echo[metrics]'"
    )
