"""Admission (``_admission``): trusted PROXY sources and per-address limits, on a real server."""

from __future__ import annotations

import ipaddress
import logging

import pytest
import trio

from trio_echo import ListenerConfig
from trio_echo._admission import MAX_TRACKED, AddressLimits
from trio_echo._sockets import host_of, is_trusted
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Connect, receive_until_eof, wait_until


def test_host_of_a_peer_string() -> None:
    assert host_of("10.1.2.3:4567") == "10.1.2.3"
    assert host_of("[2001:db8::1]:80") == "2001:db8::1"
    assert host_of("unknown peer") == "unknown peer"


def test_trusted_networks_include_ipv4_mapped_addresses() -> None:
    networks = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert is_trusted("10.9.8.7", networks)
    assert is_trusted("::ffff:10.9.8.7", networks)
    assert is_trusted("fd12::1", networks)
    assert not is_trusted("192.0.2.1", networks)
    assert not is_trusted("unknown peer", networks)


def test_open_connections_per_address() -> None:
    limits = AddressLimits(max_open=2, rate=None)
    assert limits.admit("a", 0.0) is None
    assert limits.admit("a", 0.0) is None
    assert limits.admit("a", 0.0) == "per-ip-limit"
    assert limits.admit("b", 0.0) is None
    limits.release("a")
    assert limits.admit("a", 0.0) is None
    for _ in range(2):
        limits.release("a")
    limits.release("b")
    assert limits.open == {}  # nothing kept for addresses with no connection


def test_rate_per_address_is_a_token_bucket() -> None:
    limits = AddressLimits(max_open=None, rate=2.0)  # burst of 2
    assert [limits.admit("a", 0.0) for _ in range(3)] == [None, None, "per-ip-rate"]
    assert limits.admit("a", 0.49) == "per-ip-rate"
    assert limits.admit("a", 0.5) is None  # one token back after 0.5 s
    slow = AddressLimits(max_open=None, rate=0.5)  # burst of 1, then one per 2 s
    assert [slow.admit("b", 0.0), slow.admit("b", 1.0), slow.admit("b", 2.0)] == [
        None,
        "per-ip-rate",
        None,
    ]


def test_the_rate_table_is_bounded() -> None:
    limits = AddressLimits(max_open=None, rate=1.0)
    for n in range(MAX_TRACKED + 100):
        limits.admit(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", 0.0)
    assert len(limits.buckets) == MAX_TRACKED


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^proxy_trusted applies only with proxy_protocol$"):
        ListenerConfig(proxy_trusted=("10.0.0.0/8",))
    with pytest.raises(ValueError, match=r"^proxy_trusted: 'nope' is not a network"):
        ListenerConfig(proxy_protocol=True, proxy_trusted=("nope",))
    with pytest.raises(ValueError, match=r"^max_connections_per_ip must be >= 1"):
        ListenerConfig(max_connections_per_ip=0)
    with pytest.raises(ValueError, match=r"^connection_rate_per_ip must be a finite number > 0"):
        ListenerConfig(connection_rate_per_ip=0)


async def test_an_untrusted_proxy_source_is_closed_and_counted(
    echo_server_factory: EchoServerFactory, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory(proxy_protocol=True, proxy_trusted=("10.0.0.0/8",))
    for _ in range(3):
        client = await connect(server)
        await client.send_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nhello")
        assert await receive_until_eof(client) == b""
        await client.aclose()
    await wait_until(lambda: server.statistics().closed == 3)
    assert server.statistics().closed_by_reason == {"proxy-untrusted": 3}
    refusals = [r for r in caplog.records if "refused proxy-untrusted" in r.getMessage()]
    assert len(refusals) == 1  # at most once per interval
    assert "not a trusted PROXY source" in refusals[0].getMessage()


async def test_a_trusted_proxy_source_is_served(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    server = await echo_server_factory(
        proxy_protocol=True, proxy_trusted=("10.0.0.0/8", "127.0.0.1"), rounds=1
    )
    client = await connect(server)
    await client.send_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nhello")
    assert await receive_until_eof(client) == b"hello"


async def test_per_ip_limit_closes_the_extra_connections_cleanly(
    echo_server_factory: EchoServerFactory, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory(max_connections_per_ip=2)
    first, second = await connect(server), await connect(server)
    await wait_until(lambda: server.statistics().active == 2)
    for _ in range(3):
        extra = await connect(server)
        await extra.send_all(b"refused")
        assert await receive_until_eof(extra) == b""  # EOF, not a reset
        await extra.aclose()
    await wait_until(lambda: server.statistics().closed == 3)
    assert server.statistics().closed_by_reason == {"per-ip-limit": 3}
    # The two admitted ones are served, and free their places when they close.
    await first.send_all(b"one")
    assert await first.receive_some() == b"one"
    await first.send_eof()
    assert await receive_until_eof(first) == b""
    await wait_until(lambda: server.statistics().active == 1)
    third = await connect(server)
    await third.send_all(b"three")
    assert await third.receive_some() == b"three"
    assert second is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "refused per-ip-limit: 127.0.0.1: 2 connections open already"
    ]
    # No close line per refused connection.
    assert not [r for r in caplog.records if "reason=per-ip-limit" in r.getMessage()]


async def test_per_ip_rate_closes_connections_beyond_the_rate(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    server = await echo_server_factory(connection_rate_per_ip=0.001, rounds=1)
    first = await connect(server)
    await first.send_all(b"a")
    assert await receive_until_eof(first) == b"a"
    await first.aclose()
    second = await connect(server)
    await second.send_all(b"b")
    assert await receive_until_eof(second) == b""
    await second.aclose()
    await wait_until(lambda: server.statistics().closed == 2)
    assert server.statistics().closed_by_reason == {"rounds": 1, "per-ip-rate": 1}


async def test_behind_a_balancer_the_limit_counts_the_named_client(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    server = await echo_server_factory(proxy_protocol=True, max_connections_per_ip=1)
    clients = []
    for source in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
        client = await connect(server)
        await client.send_all(f"PROXY TCP4 {source} 192.0.2.9 1111 2222\r\n".encode())
        clients.append(client)
    with trio.fail_after(5):
        assert await receive_until_eof(clients[2]) == b""
    await clients[2].aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    for client in clients[:2]:
        await client.send_all(b"x")
        assert await client.receive_some() == b"x"
    assert server.statistics().closed_by_reason == {"per-ip-limit": 1}
