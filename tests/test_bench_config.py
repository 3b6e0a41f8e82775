"""The bench's configuration (trio_echo._bench.config): every bad value is
refused with one line that starts with the field's name."""

from __future__ import annotations

from typing import Any

import pytest

from trio_echo import BenchConfig, parse_address

ADDRESS = parse_address("127.0.0.1:7")


def test_defaults_are_a_ten_second_closed_loop_of_64_byte_messages() -> None:
    config = BenchConfig(address=ADDRESS)
    assert (config.connections, config.pipeline, config.size) == (1, 1, 64)
    assert config.stop_after == 10.0
    assert BenchConfig(address=ADDRESS, count=5).stop_after is None
    assert BenchConfig(address=ADDRESS, count=5, duration=2).stop_after == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"connections": 0}, "connections must be a whole number >= 1"),
        ({"pipeline": 1.5}, "pipeline must be a whole number >= 1"),
        ({"count": True}, "count must be a whole number >= 1"),
        ({"rate": 0}, "rate must be > 0"),
        ({"interval": -1.0}, "interval must be > 0"),
        ({"duration": 0.0}, "duration must be > 0"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"warmup": -1}, "warmup"),
        ({"size": 0}, "size must be a whole number >= 1"),
        ({"size": (64 << 20) + 1}, "size"),
        ({"send_proxy": "v3"}, "send_proxy"),
        ({"pipeline": 2, "rate": 100.0}, "pipeline applies to the closed loop only"),
        ({"pipeline": 2, "interval": 1.0}, "pipeline applies to the closed loop only"),
        ({"pipeline": 2, "connect_only": True}, "pipeline does not apply with connect_only"),
        ({"rate": 10.0, "interval": 1.0}, "rate cannot be combined"),
        ({"rate": 10.0, "connect_only": True}, "rate cannot be combined"),
        ({"interval": 1.0, "connections": 2}, "interval \\(ping\\) uses one connection"),
        ({"interval": 1.0, "connect_only": True}, "interval cannot be combined"),
        ({"cafile": "ca.pem"}, "cafile needs tls"),
        ({"insecure": True}, "insecure needs tls"),
        ({"tls": True, "insecure": True, "cafile": "ca.pem"}, "cafile and insecure contradict"),
        ({"udp": 1}, "udp must be a bool, not int: 1"),
        ({"tls": "yes"}, "tls must be a bool"),
        ({"warmup": "1s"}, "warmup must be seconds, not str"),
        ({"udp": True, "tls": True}, "tls does not apply with udp"),
        ({"udp": True, "send_proxy": "v1"}, "send_proxy does not apply with udp"),
        ({"udp": True, "connect_only": True}, "connect_only does not apply with udp"),
        ({"udp": True, "size": 11}, "size must be 12 to 65507 bytes with udp"),
        ({"udp": True, "size": 65508}, "size must be 12 to 65507 bytes with udp"),
    ],
)
def test_bad_values_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as caught:
        BenchConfig(address=ADDRESS, **fields)
    first_word = str(caught.value).split(" ", 1)[0].strip("'")
    assert first_word in fields
    assert "\n" not in str(caught.value)


def test_udp_needs_a_host_and_port() -> None:
    with pytest.raises(ValueError, match=r"^udp needs HOST:PORT, not a Unix socket$"):
        BenchConfig(address=parse_address("unix:/run/echo.sock"), udp=True)


@pytest.mark.parametrize("mode", [{}, {"rate": 100.0}, {"interval": 0.5}, {"pipeline": 8}])
def test_udp_runs_in_every_echoing_mode(mode: dict[str, Any]) -> None:
    config = BenchConfig(address=ADDRESS, udp=True, size=12, **mode)
    assert config.udp


def test_the_address_must_be_parsed() -> None:
    with pytest.raises(TypeError, match="address"):
        BenchConfig(address="127.0.0.1:7")  # type: ignore[arg-type]
