"""Configuration: defaults, validation errors that name the field, immutability."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from trio_echo import ConnectionConfig, Faults, ListenerConfig, ServerConfig, TLSConfig


def test_defaults() -> None:
    config = ServerConfig()
    assert attrs.asdict(config.listener) == {
        "host": "127.0.0.1",
        "port": 9999,
        "backlog": None,
        "max_connections": 1000,
        "grace": 5.0,
        "proxy_protocol": False,
        "proxy_timeout": 3.0,
        "tcp": True,
        "unix": None,
        "unix_mode": None,
        "proxy_trusted": None,
        "max_connections_per_ip": None,
        "connection_rate_per_ip": None,
    }
    assert attrs.asdict(config.connection) == {
        "rounds": None,
        "framing": "raw",
        "max_message": 65536,
        "idle_timeout": 300.0,
        "drain_timeout": 2.0,
        "faults": {
            "latency": 0.0,
            "jitter": 0.0,
            "fragment": None,
            "fragment_delay": 0.0,
            "bandwidth": None,
            "stall_after": None,
            "reset_after": None,
            "loss": 0.0,
            "duplicate": 0.0,
            "reorder": None,
            "slow_close": 0.0,
            "timeout": None,
            "limit_data": None,
            "read_bandwidth": None,
            "toxicity": 1.0,
            "target_cidr": None,
            "target_connection": None,
            "seed": None,
        },
        "hello": None,
    }
    assert not config.connection.faults.enabled
    assert config.worker == 0


@pytest.mark.parametrize(
    ("cls", "field", "value", "error"),
    [
        (ListenerConfig, "port", 70000, ValueError),
        (ListenerConfig, "port", -1, ValueError),
        (ListenerConfig, "port", "80", TypeError),
        (ListenerConfig, "max_connections", 0, ValueError),
        (ListenerConfig, "backlog", 0, ValueError),
        (ListenerConfig, "grace", -0.5, ValueError),
        (ListenerConfig, "grace", float("nan"), ValueError),
        (ListenerConfig, "host", 127, TypeError),
        (ListenerConfig, "proxy_protocol", 1, TypeError),
        (ListenerConfig, "proxy_timeout", 0, ValueError),
        (ConnectionConfig, "rounds", 0, ValueError),
        (ConnectionConfig, "rounds", -1, ValueError),
        (ConnectionConfig, "rounds", True, TypeError),
        (ConnectionConfig, "rounds", 2.5, TypeError),
        (ConnectionConfig, "framing", "xml", ValueError),
        (ConnectionConfig, "max_message", 0, ValueError),
        (ConnectionConfig, "idle_timeout", -1, ValueError),
        (ConnectionConfig, "idle_timeout", 0, ValueError),
        (ConnectionConfig, "idle_timeout", "5", TypeError),
        (ConnectionConfig, "drain_timeout", float("inf"), ValueError),
        (ConnectionConfig, "faults", {"latency": 1}, TypeError),
        (Faults, "latency", -0.001, ValueError),
        (Faults, "latency", float("nan"), ValueError),
        (Faults, "latency", "50ms", TypeError),
        (Faults, "jitter", -1, ValueError),
        (Faults, "fragment", 0, ValueError),
        (Faults, "fragment", 1.0, TypeError),
        (Faults, "fragment_delay", -1, ValueError),
        (Faults, "bandwidth", 0, ValueError),
        (Faults, "bandwidth", True, TypeError),
        (Faults, "stall_after", -1, ValueError),
        (Faults, "reset_after", -1, ValueError),
        (Faults, "reset_after", 1.5, TypeError),
        (Faults, "seed", -1, ValueError),
        (Faults, "seed", "7", TypeError),
        (ListenerConfig, "host", 5, TypeError),
        (ConnectionConfig, "framing", "lines", ValueError),
        (TLSConfig, "certfile", None, TypeError),
        (TLSConfig, "keyfile", 5, TypeError),
        (TLSConfig, "client_ca", b"ca.pem", TypeError),
        (TLSConfig, "handshake_timeout", 0, ValueError),
        (ServerConfig, "tls", "cert.pem", TypeError),
        (ServerConfig, "listener", ConnectionConfig(), TypeError),
        (ServerConfig, "connection", ListenerConfig(), TypeError),
    ],
)
def test_invalid_values_raise_one_line_naming_the_field(
    cls: type[Any], field: str, value: object, error: type[Exception]
) -> None:
    kwargs: dict[str, object] = {field: value}
    if cls is TLSConfig and field != "certfile":
        kwargs["certfile"] = "cert.pem"
    with pytest.raises(error, match=f"^{field} must be ") as caught:
        cls(**kwargs)
    # One line, not attrs' tuple with the whole Attribute repr in it.
    message = str(caught.value)
    assert "\n" not in message
    assert "Attribute(" not in message
    assert len(message) < 160


def test_zero_idle_timeout_says_that_none_disables_it() -> None:
    with pytest.raises(ValueError, match=r"^idle_timeout must be .* \(None disables it\), got 0$"):
        ConnectionConfig(idle_timeout=0)
    assert ConnectionConfig(idle_timeout=None).idle_timeout is None


def test_valid_edge_values() -> None:
    assert ListenerConfig(port=0, grace=0).grace == 0
    assert ConnectionConfig(rounds=1, idle_timeout=None, max_message=1).rounds == 1
    assert ListenerConfig(host=None).host is None


def test_jitter_cannot_exceed_latency() -> None:
    assert Faults(latency=0.05, jitter=0.05).jitter == 0.05
    with pytest.raises(ValueError, match=r"^jitter must not exceed latency \(0.05 s\)"):
        Faults(latency=0.05, jitter=0.06)
    with pytest.raises(ValueError, match=r"^jitter"):
        Faults(jitter=0.01)


def test_fragment_delay_needs_fragment() -> None:
    assert Faults(fragment=1, fragment_delay=0.005).fragment_delay == 0.005
    with pytest.raises(ValueError, match=r"^fragment_delay needs fragment"):
        Faults(fragment_delay=0.005)


def test_faults_are_part_of_the_connection_config() -> None:
    faults = Faults(latency=30, seed=7)
    config = ServerConfig(connection=ConnectionConfig(faults=faults))
    assert config.connection.faults is faults
    assert faults.enabled
    assert not Faults(seed=7).enabled
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        faults.latency = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Faults(30)  # type: ignore[call-arg]


def test_frozen_and_keyword_only() -> None:
    config = ConnectionConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.rounds = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        ConnectionConfig(3)  # type: ignore[call-arg]
    assert attrs.evolve(config, rounds=3).rounds == 3


def test_server_config_checks_its_parts() -> None:
    with pytest.raises(TypeError, match="listener"):
        ServerConfig(listener=ConnectionConfig())  # type: ignore[arg-type]
