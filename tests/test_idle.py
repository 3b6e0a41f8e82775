"""The idle timeout: no progress in either direction for idle_timeout closes, with reason idle.

Deterministic tests drive one connection over a socket pair or memory streams on
trio's virtual clock; a few end-to-end tests use the real server on loopback TCP.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
import trio
import trio.testing

from trio_echo import ConnectionConfig
from trio_echo._connection import IDLE_SLACK, Connection
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Connect, build_connection, receive_exactly, receive_until_eof, wait_until

IDLE = 5.0


def socket_connection(**config: Any) -> tuple[Connection, trio.SocketStream]:
    """A plain-socket Connection on one end of a socket pair, and a client on the other."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection_config = ConnectionConfig(**config)
    conn = build_connection(ours, connection_config, peer="pair")
    return conn, trio.SocketStream(trio.socket.from_stdlib_socket(theirs))


def socket_of(conn: Connection) -> socket.socket:
    sock = conn.transport.socket()
    assert isinstance(sock, socket.socket)
    return sock


async def timed_serve(conn: Connection) -> tuple[str, float]:
    start = trio.current_time()
    with trio.fail_after(1000):
        reason = await conn.serve()
    return reason, trio.current_time() - start


def assert_idle_after(elapsed: float, quiet_from: float) -> None:
    """The close came idle_timeout (plus the lazy re-arming's slack) after the last progress."""
    assert IDLE <= elapsed - quiet_from <= IDLE * (1 + IDLE_SLACK) + 1e-6


async def test_silent_client_is_closed_idle(autojump_clock: trio.testing.MockClock) -> None:
    conn, client = socket_connection(idle_timeout=IDLE, drain_timeout=0)
    async with client:
        reason, elapsed = await timed_serve(conn)
        assert reason == "idle"
        assert_idle_after(elapsed, 0)
        assert await client.receive_some() == b""


async def test_silent_stream_client_is_closed_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server_side = trio.testing.memory_stream_pair()
    conn = build_connection(server_side, ConnectionConfig(idle_timeout=IDLE), peer="memory")
    reason, elapsed = await timed_serve(conn)
    assert reason == "idle"
    # Then the server half-closes and drains for drain_timeout (2 s) before closing.
    assert_idle_after(elapsed - 2.0, 0)
    assert await client.receive_some() == b""


async def test_client_that_stops_reading_is_closed_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn, client = socket_connection(idle_timeout=IDLE, drain_timeout=0)
    socket_of(conn).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = random.Random(3).randbytes(1 << 20)
    sent = 0
    last_progress = 0.0

    async def flood() -> None:
        nonlocal sent, last_progress
        # The client writes and never reads: once the echoes fill the buffers the
        # server is blocked sending, stops reading, and the client blocks too.
        for start in range(0, len(payload), 4096):
            with trio.move_on_after(1) as blocked:
                await client.send_all(payload[start : start + 4096])
            if blocked.cancelled_caught:
                return
            sent += 4096
            last_progress = trio.current_time()

    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        reason, elapsed = await timed_serve(conn)
    assert reason == "idle"
    assert 0 < sent < len(payload)
    assert_idle_after(elapsed, last_progress)


async def test_stream_client_that_stops_reading_is_closed_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Lockstep streams have no buffer at all: the echo blocks until the client reads.
    client, server_side = trio.testing.lockstep_stream_pair()
    config = ConnectionConfig(idle_timeout=IDLE, drain_timeout=0)
    conn = build_connection(server_side, config, peer="lockstep")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"never read back")
        reason, elapsed = await timed_serve(conn)
    assert reason == "idle"
    assert_idle_after(elapsed, 0)


async def test_trickling_client_is_served_normally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn, client = socket_connection(idle_timeout=IDLE, framing="line")
    message = b"one byte a second, well within the timeout\n"

    async def trickle() -> None:
        for i in range(len(message)):
            await trio.sleep(1)
            await client.send_all(message[i : i + 1])
        await client.send_eof()

    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        reason, elapsed = await timed_serve(conn)
        assert await receive_until_eof(client) == message
    assert reason == "eof"
    assert elapsed > 5 * IDLE


async def test_slowly_reading_client_is_served_normally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn, client = socket_connection(idle_timeout=IDLE)
    socket_of(conn).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = random.Random(4).randbytes(256 << 10)
    received = bytearray()

    async def send_then_eof() -> None:
        await client.send_all(payload)
        await client.send_eof()

    async def read_slowly() -> None:
        # 4 KiB a second: the server's echo is blocked most of the time, but it
        # makes progress well within the timeout.
        while chunk := await client.receive_some(4096):
            received.extend(chunk)
            await trio.sleep(1)

    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(send_then_eof)
        nursery.start_soon(read_slowly)
        reason, elapsed = await timed_serve(conn)
    assert reason == "eof"
    assert received == payload
    assert elapsed > 10 * IDLE


async def test_streaming_without_ever_blocking_is_not_idle(
    mock_clock: trio.testing.MockClock,
) -> None:
    conn, client = socket_connection(idle_timeout=IDLE, max_message=16)
    # Everything is already in the socket and the client reads the echoes as
    # they come: the server reads and sends without ever blocking, only passing
    # through the scheduler now and then.
    payload = random.Random(5).randbytes(16 << 10)
    await client.send_all(payload)
    await client.send_eof()
    done = trio.Event()
    received = bytearray()

    async def serve() -> None:
        with trio.fail_after(1000):
            assert await conn.serve() == "eof"
        done.set()

    async def read() -> None:
        while chunk := await client.receive_some():
            received.extend(chunk)

    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(read)
        jumps = 0
        # Time passes while it works: far more than idle_timeout in all.
        while not done.is_set():
            mock_clock.jump(1)
            jumps += 1
            await trio.lowlevel.checkpoint()
    assert jumps > 3 * IDLE
    assert received == payload


# ---- end to end, on the real server ----


async def test_idle_clients_get_a_clean_eof_and_others_are_unaffected(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(idle_timeout=0.5, drain_timeout=0.1)
    silent = await connect(server)
    flooder = await connect(server)
    busy = await connect(server)
    # The flooder writes until its writes block: the server is blocked sending
    # echoes it never reads.
    while True:
        with trio.move_on_after(0.1) as blocked:
            await flooder.send_all(b"x" * 65536)
        if blocked.cancelled_caught:
            break
    # The busy client keeps making progress past the timeout.
    for i in range(12):
        await busy.send_all(b"%d" % (i % 10))
        assert await receive_exactly(busy, 1) == b"%d" % (i % 10)
        await trio.sleep(0.1)
    assert await receive_until_eof(silent) == b""
    await wait_until(lambda: server.statistics().closed_by_reason.get("idle") == 2)
    assert server.statistics().active == 1
    await busy.send_eof()
    assert await receive_until_eof(busy) == b""


@pytest.mark.parametrize("framing", ["raw", "line"])
async def test_idle_timeout_none_never_closes(
    autojump_clock: trio.testing.MockClock, framing: str
) -> None:
    conn, client = socket_connection(idle_timeout=None, framing=framing)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        await trio.sleep(10_000)
        await client.send_all(b"still open\n")
        assert await receive_exactly(client, 11) == b"still open\n"
        assert conn.reason is None
        nursery.cancel_scope.cancel()
