"""Integration tests: serve() over loopback TCP on ephemeral ports."""

from __future__ import annotations

import contextlib
import random
import socket

import pytest
import trio
import trio.testing

from trio_echo import EchoServer, ServerStatistics, serve
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    Connect,
    make_config,
    receive_exactly,
    receive_until_eof,
    reset_on_close,
    wait_until,
)


async def test_port_zero_reports_bound_address(echo_server: EchoServer) -> None:
    assert echo_server.port != 0
    assert echo_server.addresses == (("127.0.0.1", echo_server.port),)


async def test_pipelined_lines_beyond_rounds_get_exact_echo_then_clean_eof(
    connect: Connect,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(rounds=3, framing="line")
    client = await connect(server)
    await client.send_all(b"a\nb\nc\nd\ne\n")
    # A reset would raise BrokenResourceError here instead of returning EOF.
    assert await receive_until_eof(client) == b"a\nb\nc\n"
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"rounds": 1}


async def test_pipelining_far_beyond_rounds_never_resets(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(rounds=2, framing="line")
    client = await connect(server)
    # Far more than one receive: the surplus must be drained, not left unread.
    await client.send_all(b"x\n" * 200_000)
    assert await receive_until_eof(client) == b"x\nx\n"
    await client.aclose()


async def test_client_half_close_echoes_everything_including_partial_line(
    connect: Connect,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(framing="line")
    client = await connect(server)
    await client.send_all(b"one\ntwo\nthree")
    await client.send_eof()
    assert await receive_until_eof(client) == b"one\ntwo\nthree"
    await wait_until(lambda: server.statistics().closed == 1)
    stats = server.statistics()
    assert (stats.rounds, stats.closed_by_reason) == (3, {"eof": 1})


async def test_all_byte_values_echo_exactly(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory()
    client = await connect(server)
    payload = bytes(range(256)) * 64
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        echoed = await receive_exactly(client, len(payload))
    assert echoed == payload
    await client.send_eof()
    assert await receive_until_eof(client) == b""


async def test_reset_ends_only_that_connection(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory()
    bystander = await connect(server)
    victim = await connect(server)
    await victim.send_all(b"ping")
    assert await receive_exactly(victim, 4) == b"ping"
    reset_on_close(victim.socket)
    victim.socket.close()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"reset": 1}
    await bystander.send_all(b"still here")
    assert await receive_exactly(bystander, 10) == b"still here"


async def test_two_hundred_concurrent_clients_echo_byte_exact(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory()
    rng = random.Random(200)
    payloads = [rng.randbytes(rng.randrange(1, 20_000)) for _ in range(200)]

    async def client(payload: bytes) -> None:
        stream = await connect(server)
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                for start in range(0, len(payload), 1000):
                    await stream.send_all(payload[start : start + 1000])
                await stream.send_eof()

            nursery.start_soon(send)
            assert await receive_until_eof(stream) == payload

    async with trio.open_nursery() as nursery:
        for payload in payloads:
            nursery.start_soon(client, payload)
    await wait_until(lambda: server.statistics().closed == 200)
    stats = server.statistics()
    assert stats.accepted == 200
    assert stats.closed_by_reason == {"eof": 200}
    assert stats.bytes_in == stats.bytes_out == sum(map(len, payloads))


async def test_statistics_are_live(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(framing="line")
    client = await connect(server)
    await client.send_all(b"abc\nde")
    assert await receive_exactly(client, 4) == b"abc\n"
    stats = server.statistics()
    assert stats == ServerStatistics(
        active=1,
        accepted=1,
        closed=0,
        closed_by_reason={},
        rounds=1,
        bytes_in=6,
        bytes_out=4,
        limit_waits=0,
        accept_errors=0,
    )


async def test_graceful_shutdown_echoes_what_was_read_then_eof_and_refuses_new(
    connect: Connect,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(framing="line", grace=5)
    idle = await connect(server)
    partial = await connect(server)
    await partial.send_all(b"done\nhalf a li")
    assert await receive_exactly(partial, 5) == b"done\n"
    await wait_until(lambda: server.statistics().bytes_in == 14)
    server.request_shutdown()
    assert await receive_until_eof(idle) == b""
    assert await receive_until_eof(partial) == b"half a li"
    # Closing ends the server's drain at once, rather than after drain_timeout.
    await idle.aclose()
    await partial.aclose()
    with trio.fail_after(1):
        await server.wait_stopped()
    with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        await sock.connect(("127.0.0.1", server.port))
    stats = server.statistics()
    assert stats.closed_by_reason == {"shutdown": 2}
    assert stats.active == 0


async def test_shutdown_lets_an_echo_in_flight_finish(
    connect: Connect, echo_server_factory: EchoServerFactory, nursery: trio.Nursery
) -> None:
    server = await echo_server_factory(grace=10)
    client = await connect(server)
    payload = random.Random(1).randbytes(8 << 20)
    received = bytearray()

    async def send_all_then_eof() -> None:
        await client.send_all(payload)
        await client.send_eof()

    async def send_then_read() -> None:
        async with trio.open_nursery() as inner:
            inner.start_soon(send_all_then_eof)
            # Read slowly at first, so the server's echo is blocked mid-send
            # when the shutdown starts.
            received.extend(await receive_exactly(client, 1 << 20))
            await wait_until(lambda: server._stopping)
            received.extend(await receive_until_eof(client))
        await client.aclose()

    nursery.start_soon(send_then_read)
    await wait_until(lambda: len(received) >= 1 << 20)
    with trio.fail_after(10):
        await server.shutdown()
    await wait_until(lambda: server.statistics().closed == 1)
    # Every byte read before the shutdown was echoed: a prefix of what was sent.
    assert len(received) >= 1 << 20
    assert bytes(received) == payload[: len(received)]
    assert server.statistics().closed_by_reason == {"shutdown": 1}


async def test_grace_expiry_cancels_connections_that_never_finish(
    connect: Connect,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(grace=0.2, drain_timeout=0.5)
    client = await connect(server)
    # The client never reads: the server's echo blocks once the socket buffers fill.
    with trio.move_on_after(1):
        while True:
            await client.send_all(b"x" * 65536)
    start = trio.current_time()
    with trio.fail_after(5):
        await server.shutdown()
    assert trio.current_time() - start < 2
    assert server.statistics().closed_by_reason == {"shutdown": 1}
    await client.aclose()


@pytest.mark.parametrize("grace", [0, 0.05])
async def test_close_after_the_grace_is_clean_for_streaming_clients(
    echo_server_factory: EchoServerFactory, grace: float
) -> None:
    # Clients that send and read without pause: when the grace runs out, each
    # echo in progress is abandoned, but the close is still a FIN and a drain.
    server = await echo_server_factory(grace=grace)
    host, port = server.addresses[0]
    clients = 50
    ends: list[str] = []

    async def streaming_client(i: int) -> None:
        stream = await trio.open_tcp_stream(host, port)
        sent, received = bytearray(), bytearray()
        chunk = random.Random(i).randbytes(4096)
        async with trio.open_nursery() as inner:

            async def write() -> None:
                while True:
                    await stream.send_all(chunk)
                    sent.extend(chunk)

            inner.start_soon(write)
            try:
                while data := await stream.receive_some():
                    received.extend(data)
                ends.append("eof")
            except trio.BrokenResourceError:
                ends.append("reset")
            inner.cancel_scope.cancel()
        await trio.aclose_forcefully(stream)
        assert bytes(received) == bytes(sent[: len(received)])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(streaming_client, i)
            # All accepted (one still in the backlog would be reset by the
            # listener's close), and streaming.
            await wait_until(lambda: server.statistics().accepted == clients, limit=10)
            await wait_until(lambda: server.statistics().bytes_out >= clients * 65536, limit=10)
            server.request_shutdown()
    assert ends == ["eof"] * clients
    assert server.statistics().closed_by_reason == {"shutdown": clients}


async def test_cancelling_serve_closes_everything(connect: Connect) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            server: EchoServer = await nursery.start(serve, make_config())
            clients = [await connect(server) for _ in range(5)]
            await wait_until(lambda: server.statistics().active == 5)
            scope.cancel()
    for client in clients:
        with trio.fail_after(5):
            # A hard cancel may close with a FIN or a reset; either way, promptly.
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive_some() == b""
    stats = server.statistics()
    assert stats.active == 0
    assert stats.closed_by_reason == {"cancelled": 5}


async def test_connection_limit_makes_extra_clients_wait_in_backlog(
    connect: Connect,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(max_connections=2)
    first, second = await connect(server), await connect(server)
    for stream in (first, second):
        await stream.send_all(b"hi")
        assert await receive_exactly(stream, 2) == b"hi"
    third = await connect(server)  # completes in the kernel's backlog
    await third.send_all(b"waiting")
    with trio.move_on_after(0.3):
        await third.receive_some()
        pytest.fail("the third client was served beyond max_connections")
    assert server.statistics().accepted == 2
    assert server.statistics().limit_waits >= 1
    await first.aclose()
    assert await receive_exactly(third, 7) == b"waiting"
    assert server.statistics().accepted == 3


async def test_host_none_binds_every_address(echo_server_factory: EchoServerFactory) -> None:
    server = await echo_server_factory(host=None)
    families = {socket.AF_INET6 if ":" in host else socket.AF_INET for host, _ in server.addresses}
    assert socket.AF_INET in families or socket.AF_INET6 in families
    for host, port in server.addresses:
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"x")
        assert await receive_exactly(stream, 1) == b"x"
        await stream.aclose()


async def test_bind_error_raises_oserror(echo_server_factory: EchoServerFactory) -> None:
    server = await echo_server_factory()
    with pytest.raises(OSError, match="in use"):
        await echo_server_factory(port=server.port)


async def test_drain_of_a_flooding_client_is_bounded_and_fair(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(rounds=1, drain_timeout=0.3)
    bystander = await connect(server)
    flooder = await connect(server)
    await flooder.send_all(b"first")
    assert await receive_exactly(flooder, 5) == b"first"

    async def flood() -> None:
        # The server closes with the flood unread once the drain times out,
        # so the kernel resets the connection: the flood ends in a broken pipe.
        with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
            while True:
                await flooder.send_all(b"z" * 65536)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        # The server drains the flood; other connections are still served.
        await bystander.send_all(b"ping")
        assert await receive_exactly(bystander, 4) == b"ping"
        assert await receive_until_eof(flooder) == b""
        await wait_until(lambda: server.statistics().closed == 2)
        nursery.cancel_scope.cancel()
    assert server.statistics().closed_by_reason == {"rounds": 2}
