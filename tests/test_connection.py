"""The connection loop: over trio.testing memory streams (virtual time via
autojump_clock) and over a plain socket driven directly (a real socketpair)."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_echo import ConnectionConfig
from trio_echo._connection import Connection
from trio_echo._sockets import format_address

from .conftest import HALF_CLOSEABLE, TRANSPORTS, MakeConnection, build_connection, serve_in

Pair = trio.StapledStream[trio.abc.SendStream, trio.abc.ReceiveStream]

# ---------------------------------------------------------------- helpers


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    received = bytearray()
    with trio.fail_after(30):
        while len(received) < n:
            chunk = await stream.receive_some(n - len(received))
            if not chunk:
                raise EOFError(f"EOF after {len(received)} of {n} bytes: {bytes(received)!r}")
            received += chunk
    return bytes(received)


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the peer's EOF (a reset raises BrokenResourceError)."""
    received = bytearray()
    with trio.fail_after(30):
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


def memory_connection(
    **config: Any,
) -> tuple[Connection, trio.StapledStream[Any, Any], trio.StapledStream[Any, Any]]:
    """(connection, its server-side stream, the client's stream) over memory streams,
    which buffer without limit."""
    server, client = trio.testing.memory_stream_pair()
    return build_connection(server, ConnectionConfig(**config)), server, client


def lockstep_connection(**config: Any) -> tuple[Connection, Pair, Pair]:
    """Like memory_connection, but send_all blocks until the other side has received
    everything: a send that completes proves the peer read it."""
    server, client = trio.testing.lockstep_stream_pair()
    return build_connection(server, ConnectionConfig(**config)), server, client


class WholeCloseStream(trio.abc.Stream):
    """A Stream that is not a HalfCloseableStream (as some transports are not)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FailingStream(WholeCloseStream):
    """Receives fail with the given exception."""

    def __init__(self, inner: trio.abc.Stream, exc: BaseException) -> None:
        super().__init__(inner)
        self.exc = exc
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.lowlevel.checkpoint()
        raise self.exc

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


# ---------------------------------------------------------------- echo and rounds


@pytest.mark.parametrize("kind", HALF_CLOSEABLE)
async def test_raw_echo_until_client_eof(
    autojump_clock: MockClock, make_connection: MakeConnection, kind: str
) -> None:
    under = make_connection(kind)
    conn, client = under.conn, under.client
    async with trio.open_nursery() as nursery:
        done = await under.start(nursery)
        await client.send_all(b"hello")
        assert await receive_exactly(client, 5) == b"hello"
        await client.send_all(b"\x00\xff\n")
        assert await receive_exactly(client, 3) == b"\x00\xff\n"
        assert conn.reason is None
        await under.half_close()
        assert await receive_until_eof(client) == b""
        with trio.fail_after(1):
            await done.wait()
    assert conn.reason == "eof"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (2, 8, 8)


@pytest.mark.parametrize("kind", HALF_CLOSEABLE)
async def test_raw_rounds_closes_after_exactly_n_echoes_then_eof(
    autojump_clock: MockClock, make_connection: MakeConnection, kind: str
) -> None:
    under = make_connection(kind, rounds=2, drain_timeout=10)
    conn, client = under.conn, under.client
    async with trio.open_nursery() as nursery:
        done = await under.start(nursery)
        await client.send_all(b"one")
        assert await receive_exactly(client, 3) == b"one"
        assert (conn.rounds, conn.reason) == (1, None)
        await client.send_all(b"two!")
        assert await receive_until_eof(client) == b"two!"
        assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (2, 7, 7)
        # The server is draining: more input is read and discarded, not echoed.
        await client.send_all(b"three")
        await under.half_close()
        with trio.fail_after(1):
            await done.wait()
    assert conn.reason == "rounds"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (2, 7, 7)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_line_rounds_3_pipelined_lines_echo_exactly_three(
    autojump_clock: MockClock, make_connection: MakeConnection, kind: str
) -> None:
    under = make_connection(kind, rounds=3, framing="line")
    conn, client = under.conn, under.client
    async with trio.open_nursery() as nursery:
        await under.start(nursery)
        await client.send_all(b"a\nb\nc\nd\ne\n")
        assert await receive_until_eof(client) == b"a\nb\nc\n"
        await client.aclose()
    assert conn.reason == "rounds"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (3, 10, 6)


@pytest.mark.parametrize("kind", HALF_CLOSEABLE)
async def test_line_split_across_sends_is_echoed_whole(
    autojump_clock: MockClock, make_connection: MakeConnection, kind: str
) -> None:
    under = make_connection(kind, framing="line")
    conn, client = under.conn, under.client
    async with trio.open_nursery() as nursery:
        await under.start(nursery)
        for piece in (b"hel", b"lo", b" world"):
            await client.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()
        assert conn.bytes_in == 11
        assert conn.bytes_out == 0
        await client.send_all(b"\n")
        assert await receive_exactly(client, 12) == b"hello world\n"
        await under.half_close()
        assert await receive_until_eof(client) == b""
    assert conn.reason == "eof"
    assert conn.rounds == 1


@pytest.mark.parametrize("kind", HALF_CLOSEABLE)
async def test_client_eof_echoes_partial_line(
    autojump_clock: MockClock, make_connection: MakeConnection, kind: str
) -> None:
    under = make_connection(kind, framing="line")
    conn, client = under.conn, under.client
    async with trio.open_nursery() as nursery:
        await under.start(nursery)
        await client.send_all(b"x\npartial")
        assert await receive_exactly(client, 2) == b"x\n"
        await under.half_close()
        assert await receive_until_eof(client) == b"partial"
    assert conn.reason == "eof"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (2, 9, 9)


# Not over TLS: plaintext the server never read (past max_message in one record)
# makes OpenSSL drop the close_notify (see _tls.ServerTransport), so the client
# sees a TCP EOF without it.
@pytest.mark.parametrize("kind", HALF_CLOSEABLE)
async def test_line_too_long_echoes_lines_before_it_then_eof(
    autojump_clock: MockClock, make_connection: MakeConnection, kind: str
) -> None:
    under = make_connection(kind, framing="line", max_message=4)
    conn, client = under.conn, under.client
    async with trio.open_nursery() as nursery:
        await under.start(nursery)
        await client.send_all(b"ab\ncdefgh")
        assert await receive_until_eof(client) == b"ab\n"
        await client.aclose()
    assert conn.reason == "line-too-long"
    assert conn.rounds == 1


# ---------------------------------------------------------------- idle timeout


# ---------------------------------------------------------------- stop()


@pytest.mark.parametrize("kind", HALF_CLOSEABLE)
async def test_stop_while_waiting_echoes_partial_line_then_eof_promptly(
    autojump_clock: MockClock, make_connection: MakeConnection, kind: str
) -> None:
    under = make_connection(kind, framing="line", drain_timeout=5)
    conn, client = under.conn, under.client
    async with trio.open_nursery() as nursery:
        done = await under.start(nursery)
        await client.send_all(b"done\nhalf a li")
        assert await receive_exactly(client, 5) == b"done\n"
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        conn.stop()
        assert await receive_until_eof(client) == b"half a li"
        assert trio.current_time() - start < 0.01
        # Closing ends the server's drain at once, not after drain_timeout.
        await under.half_close()
        await done.wait()
        assert trio.current_time() - start < 0.01
    assert conn.reason == "shutdown"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (2, 14, 14)


async def test_stop_while_waiting_raw_sends_eof(autojump_clock: MockClock) -> None:
    conn, _, client = memory_connection(drain_timeout=3)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await serve_in(nursery, conn)
        conn.stop()
        assert await receive_until_eof(client) == b""
        assert trio.current_time() - start < 0.01
    # The client never sent EOF: the drain ended at drain_timeout.
    assert 3 <= trio.current_time() - start < 3.01
    assert conn.reason == "shutdown"
    assert conn.rounds == 0


async def test_stop_before_serve_closes_at_once(autojump_clock: MockClock) -> None:
    conn, _, client = memory_connection(drain_timeout=1)
    conn.stop()
    await client.send_all(b"never read")
    with trio.fail_after(2):
        assert await conn.serve() == "shutdown"
    assert await receive_until_eof(client) == b""
    assert conn.bytes_in == 0


async def test_stop_while_sending_finishes_the_echo_in_progress(
    autojump_clock: MockClock,
) -> None:
    conn, _, client = lockstep_connection(drain_timeout=1)
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        await client.send_all(b"x" * 100)
        # The server is now blocked sending the echo, which the client has not read.
        await trio.testing.wait_all_tasks_blocked()
        conn.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert await receive_until_eof(client) == b"x" * 100
        await client.send_eof()
    assert conn.reason == "shutdown"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (1, 100, 100)


@pytest.mark.parametrize("framing", ["raw", "line"])
async def test_stop_just_after_data_arrives_still_echoes_it(
    autojump_clock: MockClock, framing: str
) -> None:
    conn, _, client = memory_connection(framing=framing, drain_timeout=1)
    async with trio.open_nursery() as nursery:
        await serve_in(nursery, conn)
        # send_all wakes the server's pending receive_some, but the server task
        # does not run until this task yields: stop() comes in between, as it does
        # when the server's shutdown runs in the same scheduling batch.
        await client.send_all(b"hello\n")
        conn.stop()
        echoed = await receive_until_eof(client)
        await client.send_eof()
    assert conn.reason == "shutdown"
    assert conn.bytes_in == 6
    assert echoed == b"hello\n"


# ---------------------------------------------------------------- cancel, reset, error


async def test_cancelling_serve_closes_the_stream(autojump_clock: MockClock) -> None:
    conn, server, client = memory_connection(framing="line")
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await conn.serve()
        except BaseException as exc:
            raised.append(exc)
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await client.send_all(b"partial")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(raised) == 1
    assert isinstance(raised[0], trio.Cancelled)
    assert conn.reason == "cancelled"
    assert conn.bytes_in == 7
    # Closed at once: the partial line is not echoed, the client sees EOF.
    assert await receive_until_eof(client) == b""
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")


async def test_client_closing_while_server_sends_is_reset(autojump_clock: MockClock) -> None:
    conn, _, client = lockstep_connection()
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        await client.send_all(b"echo me")
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        await client.aclose()
    assert conn.reason == "reset"
    assert (conn.bytes_in, conn.bytes_out, conn.rounds) == (7, 0, 0)


async def test_client_gone_before_the_echo_is_reset(autojump_clock: MockClock) -> None:
    conn, _, client = memory_connection()
    async with trio.open_nursery() as nursery:
        await serve_in(nursery, conn)
        await client.send_all(b"hello")
        await client.aclose()
    assert conn.reason == "reset"
    assert conn.bytes_in == 5
    assert conn.bytes_out == 0


@pytest.mark.parametrize(
    ("exc", "level"),
    [(OSError(5, "I/O error"), logging.WARNING), (ValueError("boom"), logging.ERROR)],
    ids=["oserror", "unexpected"],
)
async def test_transport_error_closes_with_reason_error(
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
    exc: BaseException,
    level: int,
) -> None:
    inner, _ = trio.testing.memory_stream_pair()
    stream = FailingStream(inner, exc)
    conn = build_connection(stream, ConnectionConfig(), peer="bad-peer")
    with caplog.at_level(logging.DEBUG, logger="trio_echo"), trio.fail_after(1):
        assert await conn.serve() == "error"
    assert conn.reason == "error"
    assert stream.closed
    records = [r for r in caplog.records if r.name == "trio_echo" and "bad-peer" in r.message]
    assert [r.levelno for r in records] == [level]


# ---------------------------------------------------------------- draining


async def test_after_rounds_server_drains_until_client_eof(autojump_clock: MockClock) -> None:
    conn, _, client = lockstep_connection(rounds=1, drain_timeout=10)
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        start = trio.current_time()
        await client.send_all(b"x")
        assert await receive_exactly(client, 1) == b"x"
        assert await client.receive_some() == b""
        # Lockstep: each send_all returns only once the server has read it all.
        for _ in range(20):
            await client.send_all(b"y" * 10_000)
        assert not done.is_set()
        await client.send_eof()
        await done.wait()
        assert trio.current_time() - start < 0.01
    assert conn.reason == "rounds"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (1, 1, 1)


async def test_drain_is_bounded_by_drain_timeout(autojump_clock: MockClock) -> None:
    conn, _, client = memory_connection(rounds=1, drain_timeout=2.5)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        await client.send_all(b"x")
        assert await receive_until_eof(client) == b"x"
        assert trio.current_time() - start < 0.01
        await done.wait()
    assert 2.5 <= trio.current_time() - start < 2.51
    assert conn.reason == "rounds"


async def test_without_half_close_the_close_is_the_eof(autojump_clock: MockClock) -> None:
    server, client = trio.testing.memory_stream_pair()
    conn = build_connection(WholeCloseStream(server), ConnectionConfig(rounds=1, drain_timeout=2))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await serve_in(nursery, conn)
        await client.send_all(b"x")
        assert await receive_exactly(client, 1) == b"x"
        # No send_eof to send: EOF comes with the close, after the drain.
        assert await receive_until_eof(client) == b""
        assert 2 <= trio.current_time() - start < 2.01
    assert conn.reason == "rounds"


# ---------------------------------------------------------------- plain socket


SocketFactory = Callable[..., tuple[Connection, trio.SocketStream, socket.socket]]


@pytest.fixture
def socket_connection() -> Iterator[SocketFactory]:
    """Make (Connection, client stream, server socket) over a socketpair;
    every socket is closed when the test ends."""
    sockets: list[socket.socket] = []

    def make(**config: Any) -> tuple[Connection, trio.SocketStream, socket.socket]:
        conf = ConnectionConfig(**config)
        a, b = socket.socketpair()
        sockets.extend((a, b))
        a.setblocking(False)
        conn = build_connection(a, conf, peer="x")
        return conn, trio.SocketStream(trio.socket.from_stdlib_socket(b)), a

    yield make
    for sock in sockets:
        sock.close()


async def test_socket_echo(socket_connection: SocketFactory) -> None:
    conn, client, sock = socket_connection()
    async with trio.open_nursery() as nursery:
        await serve_in(nursery, conn)
        await client.send_all(b"hello")
        assert await receive_exactly(client, 5) == b"hello"
        await client.send_all(b"again\n")
        assert await receive_exactly(client, 6) == b"again\n"
        await client.send_eof()
        assert await receive_until_eof(client) == b""
    assert conn.reason == "eof"
    assert (conn.rounds, conn.bytes_in, conn.bytes_out) == (2, 11, 11)
    assert sock.fileno() == -1


async def test_socket_rounds_close_with_clean_eof_despite_pipelined_input(
    socket_connection: SocketFactory,
) -> None:
    conn, client, _ = socket_connection(rounds=2, framing="line", drain_timeout=10)
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        # Far more than one receive: the surplus must be drained, not left unread
        # (closing with unread input would reset the connection).
        await client.send_all(b"x\n" * 200_000)
        assert await receive_until_eof(client) == b"x\nx\n"
        assert not done.is_set()
        await client.send_eof()
        with trio.fail_after(5):
            await done.wait()
    assert conn.reason == "rounds"
    assert (conn.rounds, conn.bytes_out) == (2, 4)


async def test_socket_large_echo_through_blocking_sends(socket_connection: SocketFactory) -> None:
    conn, client, _ = socket_connection()
    payload = random.Random(1234).randbytes(4 * 1024 * 1024)
    received = bytearray()
    sent = trio.Event()

    async def send() -> None:
        await client.send_all(payload)
        sent.set()

    async def receive() -> None:
        while len(received) < len(payload):
            chunk = await client.receive_some(1 << 16)
            assert chunk
            received.extend(chunk)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await serve_in(nursery, conn)
            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            # Nobody reads the echo yet: every buffer fills, so the server is
            # blocked sending and the client is blocked sending.
            assert not sent.is_set()
            assert 0 < conn.bytes_out < len(payload)
            assert conn.bytes_in < len(payload)
            nursery.start_soon(receive)
            await sent.wait()
            await client.send_eof()
    assert bytes(received) == payload
    assert conn.reason == "eof"
    assert conn.bytes_in == conn.bytes_out == len(payload)


async def test_socket_stop_while_waiting_echoes_partial_line(
    autojump_clock: MockClock, socket_connection: SocketFactory
) -> None:
    conn, client, _ = socket_connection(framing="line", drain_timeout=5)
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        await client.send_all(b"one\ntw")
        assert await receive_exactly(client, 4) == b"one\n"
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        conn.stop()
        assert await receive_until_eof(client) == b"tw"
        await client.send_eof()
        await done.wait()
        assert trio.current_time() - start < 0.01
    assert conn.reason == "shutdown"
    assert conn.rounds == 2


async def test_socket_cancel_closes_the_socket(socket_connection: SocketFactory) -> None:
    conn, client, sock = socket_connection()
    async with trio.open_nursery() as nursery:
        await serve_in(nursery, conn)
        await client.send_all(b"abc")
        assert await receive_exactly(client, 3) == b"abc"
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert conn.reason == "cancelled"
    assert sock.fileno() == -1
    assert await receive_until_eof(client) == b""


async def test_socket_peer_gone_before_the_echo_is_reset() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        config = ConnectionConfig()
        conn = build_connection(a, config, peer="x")
        b.sendall(b"hello")
        b.close()
        # The server reads b"hello", then its echo goes to a socket nobody holds.
        with trio.fail_after(5):
            assert await conn.serve() == "reset"
    assert conn.reason == "reset"
    assert (conn.bytes_in, conn.bytes_out) == (5, 0)


async def test_socket_peer_closing_with_unread_echo_is_reset(
    socket_connection: SocketFactory,
) -> None:
    conn, client, sock = socket_connection()
    async with trio.open_nursery() as nursery:
        await serve_in(nursery, conn)
        await client.send_all(b"hello")
        await trio.testing.wait_all_tasks_blocked()
        assert conn.bytes_out == 5
        # Closing with the echo unread makes the kernel reset the connection.
        await client.aclose()
    assert conn.reason == "reset"
    assert sock.fileno() == -1


async def test_socket_client_resetting_during_the_drain_changes_nothing(
    autojump_clock: MockClock, socket_connection: SocketFactory
) -> None:
    conn, client, sock = socket_connection(rounds=1, drain_timeout=10)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        done = await serve_in(nursery, conn)
        await client.send_all(b"x")
        await trio.testing.wait_all_tasks_blocked()
        # The server has echoed, half-closed and is draining; the client closes
        # with the echo unread, so the server's drain sees a reset.
        assert conn.bytes_out == 1
        assert not done.is_set()
        await client.aclose()
        await done.wait()
    assert conn.reason == "rounds"
    assert trio.current_time() - start < 0.01
    assert sock.fileno() == -1


async def test_socket_connection_with_ready_data_yields_to_other_tasks(
    socket_connection: SocketFactory,
) -> None:
    conn, client, _ = socket_connection(max_message=16)
    payload = bytes(range(256)) * 16
    seen: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await serve_in(nursery, conn)
            # One send: all 4096 bytes are ready before the server runs, so it can
            # read 16 bytes at a time without ever blocking.
            await client.send_all(payload)
            while conn.rounds < len(payload) // 16:
                seen.append(conn.rounds)
                await trio.lowlevel.checkpoint()
            assert await receive_exactly(client, len(payload)) == payload
            await client.send_eof()
    assert conn.reason == "eof"
    assert conn.rounds == 256
    # This task ran while the server was part-way through: it yielded.
    assert any(0 < rounds < 256 for rounds in seen)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("127.0.0.1", 9999), "127.0.0.1:9999"),
        (("::1", 80, 0, 0), "[::1]:80"),
        ("/tmp/echo.sock", "/tmp/echo.sock"),
        (None, "None"),
    ],
)
def test_format_address(address: object, expected: str) -> None:
    assert format_address(address) == expected
