"""Faults changed at run time: ``EchoServer.set_faults`` (and the thread handle's),
for new and open connections, under ``autojump_clock``."""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import trio.testing

from trio_echo import EchoServer, Faults, ThreadedEchoServer, serve_in_thread
from trio_echo._faults import FaultTransport
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Certificates, Connect, receive_exactly, wait_until
from .test_tls import open_tls


async def echo_time(client: trio.SocketStream, message: bytes = b"ping") -> float:
    """Virtual seconds one echo of *message* takes."""
    start = trio.current_time()
    await client.send_all(message)
    assert await receive_exactly(client, len(message), limit=100) == message
    return trio.current_time() - start


async def test_latency_added_and_removed_in_the_middle_of_a_plain_connection(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory()
    client = await connect(server)
    assert await echo_time(client) == 0
    (conn,) = server._active
    assert not isinstance(conn.transport, FaultTransport)  # the plain path
    server.set_faults(Faults(latency=5), existing=True)
    assert server.faults == Faults(latency=5)
    assert await echo_time(client) == pytest.approx(5)
    assert await echo_time(client) == pytest.approx(5)
    server.set_faults(None, existing=True)
    assert server.faults is None
    assert await echo_time(client) == 0
    assert server.statistics().faults == {"latency": 2}


async def test_an_open_connection_with_faults_switches_to_the_new_ones(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(latency=5))
    client = await connect(server)
    assert await echo_time(client) == pytest.approx(5)
    server.set_faults(Faults(latency=1, limit_data=8), existing=True)
    assert await echo_time(client) == pytest.approx(1)
    # The data limit counts from the switch: 4 bytes went out since.
    await client.send_all(b"abcdefgh")
    assert await receive_exactly(client, 4, limit=100) == b"abcd"
    assert await client.receive_some() == b""
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"limit-data": 1}


async def test_without_existing_only_new_connections_get_the_faults(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(latency=2))
    old = await connect(server)
    assert await echo_time(old) == pytest.approx(2)
    server.set_faults(Faults(latency=7))
    new = await connect(server)
    assert await echo_time(new) == pytest.approx(7)
    assert await echo_time(old) == pytest.approx(2)
    server.set_faults(None)
    newest = await connect(server)
    assert await echo_time(newest) == 0
    assert await echo_time(new) == pytest.approx(7)


async def test_a_fault_that_halts_reaches_an_open_plain_connection(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory()
    client = await connect(server)
    assert await echo_time(client) == 0
    server.set_faults(Faults(timeout=30), existing=True)
    start = trio.current_time()
    await client.send_all(b"still there?")
    with trio.fail_after(100):
        assert await client.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(30)
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"timeout-injected": 1}


async def test_target_connection_counts_from_the_change_open_connections_first(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory()
    first, second = await connect(server), await connect(server)
    for client in (first, second):
        assert await echo_time(client) == 0
    server.set_faults(Faults(latency=3, target_connection=2), existing=True)
    third = await connect(server)
    assert [await echo_time(c) for c in (first, second, third)] == [0, pytest.approx(3), 0]


async def test_set_faults_is_logged_and_checks_its_argument(
    echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory()
    with caplog.at_level(logging.INFO, logger="trio_echo"):
        server.set_faults(Faults(latency=0.25), existing=True)
        server.set_faults(Faults())  # every fault off is off
    assert server.faults is None
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("faults set")]
    assert lines == [
        "faults set for new and open connections: latency=0.25",
        "faults set for new connections: off",
    ]
    with pytest.raises(TypeError, match="faults must be a Faults or None, not dict"):
        server.set_faults({"latency": 1})  # type: ignore[arg-type]


async def test_close_line_shows_faults_set_at_run_time(
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server: EchoServer = await echo_server_factory()
    server.set_faults(Faults(limit_data=2))
    client = await connect(server)
    with caplog.at_level(logging.INFO, logger="trio_echo"):
        await client.send_all(b"abc")
        assert await receive_exactly(client, 2) == b"ab"
        await wait_until(lambda: server.statistics().closed == 1)
    (line,) = [r.getMessage() for r in caplog.records if "closed" in r.getMessage()]
    assert "reason=limit-data faults=limit_data:1" in line


# ---- the thread handle and the fixtures ----


def echo_once(server: ThreadedEchoServer, message: bytes) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(message)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def test_thread_handle_sets_faults_for_new_connections() -> None:
    with serve_in_thread() as server:
        server.set_faults(Faults(limit_data=3))
        assert server.faults == Faults(limit_data=3)
        # limit_data closes after 3 bytes: the client reads them, then EOF.
        assert echo_once(server, b"hello") == b"hel"
        server.set_faults(None)
        assert server.faults is None
        with pytest.raises(TypeError, match="Faults or None"):
            server.set_faults(3)
    assert server.statistics().closed_by_reason == {"limit-data": 1}
    with pytest.raises(trio.RunFinishedError):
        server.set_faults(None)


def test_the_threaded_fixture_returns_a_handle_with_set_faults(
    echo_server: ThreadedEchoServer,
) -> None:
    echo_server.set_faults(Faults(limit_data=1), existing=True)
    assert echo_once(echo_server, b"xyz") == b"x"


async def test_faults_reach_an_open_tls_connection_on_the_plaintext(
    autojump_clock: trio.testing.MockClock,
    certificates: Certificates,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(tls=certificates.tls())
    async with await open_tls(server, certificates.client_context()) as client:
        await client.send_all(b"abc")
        assert await receive_exactly(client, 3) == b"abc"
        server.set_faults(Faults(latency=4, limit_data=5), existing=True)
        start = trio.current_time()
        await client.send_all(b"defghij")
        assert await receive_exactly(client, 5, limit=100) == b"defgh"
        assert trio.current_time() - start == pytest.approx(4)
        # limit-data's clean close is TLS's: close_notify, then EOF.
        with trio.fail_after(10):
            assert await client.receive_some() == b""
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"limit-data": 1}
