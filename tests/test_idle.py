"""The idle timeout: no progress in either direction for idle_timeout closes, with reason idle.

Deterministic tests drive one connection over a socket pair or memory streams on
trio's virtual clock; a few end-to-end tests use the real server on loopback TCP.
"""

from __future__ import annotations

import contextlib
import random
import socket
from typing import Any

import pytest
import trio
import trio.testing

from trio_echo import ConnectionConfig, Faults
from trio_echo._connection import IDLE_SLACK, Connection
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    HALF_CLOSEABLE,
    TRANSPORTS,
    Certificates,
    Connect,
    MakeConnection,
    build_connection,
    receive_exactly,
    receive_until_eof,
    serve_in,
    wait_until,
)
from .test_tls import open_tls

IDLE = 5.0
DRAIN = 2.0


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


@pytest.mark.parametrize("framing", ["raw", "line"])
@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_silent_client_is_closed_idle_then_drained(
    autojump_clock: trio.testing.MockClock,
    make_connection: MakeConnection,
    kind: str,
    framing: str,
) -> None:
    under = make_connection(kind, framing=framing, idle_timeout=IDLE, drain_timeout=DRAIN)
    async with trio.open_nursery() as nursery:
        done = await under.start(nursery)
        await under.client.send_all(b"one\n")
        assert await receive_exactly(under.client, 4) == b"one\n"
        quiet_from = trio.current_time()
        # The half-close (over TLS: close_notify) comes after idle_timeout ...
        assert await receive_until_eof(under.client) == b""
        eof_at = trio.current_time()
        assert_idle_after(eof_at, quiet_from)
        # ... then the server drains for drain_timeout before it closes.
        await done.wait()
        assert trio.current_time() - eof_at == pytest.approx(DRAIN)
    assert under.conn.reason == "idle"


@pytest.mark.parametrize("framing", ["raw", "line"])
@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_idle_timeout_none_never_closes(
    autojump_clock: trio.testing.MockClock,
    make_connection: MakeConnection,
    kind: str,
    framing: str,
) -> None:
    under = make_connection(kind, idle_timeout=None, framing=framing)
    async with trio.open_nursery() as nursery:
        done = await under.start(nursery)
        await trio.sleep(24 * 3600)
        assert not done.is_set()
        await under.client.send_all(b"still here\n")
        assert await receive_exactly(under.client, 11) == b"still here\n"
        assert under.conn.reason is None
        nursery.cancel_scope.cancel()
    assert under.conn.reason == "cancelled"


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
@pytest.mark.parametrize("kind", HALF_CLOSEABLE)
async def test_trickling_client_is_never_idle(
    autojump_clock: trio.testing.MockClock,
    make_connection: MakeConnection,
    kind: str,
    framing: str,
) -> None:
    under = make_connection(kind, framing=framing, idle_timeout=5)
    conn, client = under.conn, under.client
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        for i in range(1, 31):
            await trio.sleep(1)
            await client.send_all(b"x")
            if framing == "raw":
                assert await receive_exactly(client, 1) == b"x"
            await trio.testing.wait_all_tasks_blocked()
            assert conn.bytes_in == i
            assert not done.is_set()
            assert conn.reason is None
        assert trio.current_time() - start >= 30
        assert conn.bytes_in == 30
        await client.send_all(b"\n")
        await under.half_close()
        expected = b"x" * 30 + b"\n"
        if framing == "raw":
            expected = b"\n"
        assert await receive_until_eof(client) == expected
    assert conn.reason == "eof"


async def test_client_not_reading_its_last_echo_is_closed_as_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # With rounds=1 the protocol is already done ("rounds") when the echo blocks;
    # a client that never reads it is idle, and was never sent its rounds.
    server_side, client = trio.testing.lockstep_stream_pair()
    config = ConnectionConfig(rounds=1, idle_timeout=5, drain_timeout=1)
    conn = build_connection(server_side, config)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await serve_in(nursery, conn)
            await client.send_all(b"hello")
            await trio.sleep(10)
    assert conn.reason == "idle"
    assert conn.bytes_out == 0


async def test_socket_client_not_reading_is_closed_as_idle_while_server_sends(
    autojump_clock: trio.testing.MockClock, make_connection: MakeConnection
) -> None:
    idle, drain = 5.0, 1.0
    under = make_connection("socket", idle_timeout=idle, drain_timeout=drain)
    conn, client, sock = under.conn, under.client, under.server_socket
    assert sock is not None

    async def send_without_reading() -> None:
        # The server's close may break this send: that is not what is tested.
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_all(b"z" * (4 * 1024 * 1024))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_without_reading)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            reason = await conn.serve()
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert reason == "idle"
    assert idle <= elapsed < idle * 1.1 + drain
    assert sock.fileno() == -1


async def test_idle_connection_is_half_closed_then_closed(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(idle_timeout=0.3)
    client = await connect(server)
    await client.send_all(b"one")
    assert await receive_exactly(client, 3) == b"one"
    started = trio.current_time()
    assert await receive_until_eof(client) == b""
    # Within [idle_timeout, idle_timeout * 1.05] plus scheduling, not the default 300 s.
    assert 0.25 < trio.current_time() - started < 3
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"idle": 1}


async def test_idle_timeout_over_tls(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls(), idle_timeout=0.3)
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"one")
    assert await receive_exactly(client, 3) == b"one"
    assert await receive_until_eof(client) == b""
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"idle": 1}


async def test_stall_outlasting_the_idle_deadline_it_started_with_ends_as_stalled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The stall times itself; the sweep's bucket for the connection's earlier
    # deadline comes due in the middle of it and must leave it alone.
    server_side, client = trio.testing.memory_stream_pair()
    config = ConnectionConfig(idle_timeout=IDLE, faults=Faults(stall_after=1))
    conn = build_connection(server_side, config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        await trio.sleep(1)
        stall_from = trio.current_time()
        await client.send_all(b"ab")
        assert await receive_until_eof(client) == b"a"
        assert trio.current_time() - stall_from == pytest.approx(IDLE)
    assert conn.reason == "stalled"
