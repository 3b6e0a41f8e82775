"""Hostile and unlucky clients: oversized lines, slow readers, shutdown under load, crowds."""

from __future__ import annotations

import random
import re
import select
import signal
import socket
from collections.abc import Callable

import pytest
import trio

from trio_echo import EchoProtocol
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    Connect,
    StartProcess,
    receive_exactly,
    receive_until_eof,
    wait_until,
)

MiB = 1 << 20

# ---- 4. oversized lines ----


def test_line_buffer_stays_bounded_whatever_the_client_sends() -> None:
    max_message = 4096
    protocol = EchoProtocol(framing="line", rounds=None, max_message=max_message)
    rng = random.Random(4)
    echoed = bytearray()
    fed = 0
    lines = b"".join(b"%d\n" % i for i in range(300))
    stream = lines + b"y" * (10 * MiB)
    while protocol.reason is None:
        chunk = stream[fed : fed + rng.randrange(1, 65536)]
        fed += len(chunk)
        echoed += protocol.receive_data(chunk)
        assert protocol.buffered < max_message
    assert protocol.reason == "line-too-long"
    assert echoed == lines
    # It stops within one receive of the limit, not at the end of the 10 MiB.
    assert fed < len(lines) + max_message + 65536


async def test_oversized_line_echoes_complete_lines_then_clean_eof(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    max_message = 1024
    server = await echo_server_factory(framing="line", max_message=max_message)
    bystander = await connect(server)
    client = await connect(server)
    lines = b"first\nsecond\nthird\n"
    async with trio.open_nursery() as nursery:

        async def send_then_eof() -> None:
            await client.send_all(lines + b"x" * MiB)
            await client.send_eof()

        nursery.start_soon(send_then_eof)
        # A reset would raise BrokenResourceError instead of returning at EOF.
        assert await receive_until_eof(client) == lines
    await wait_until(lambda: server.statistics().closed == 1)
    stats = server.statistics()
    assert stats.closed_by_reason == {"line-too-long": 1}
    # What reached the protocol is bounded by max_message plus one receive; the
    # rest of the megabyte was read and discarded.
    assert stats.bytes_in <= len(lines) + 2 * max_message
    await bystander.send_all(b"unaffected\n")
    assert await receive_exactly(bystander, 11) == b"unaffected\n"


# ---- 5. slow readers: backpressure keeps the server's memory flat ----


def send_until_blocked(sock: socket.socket, limit: int, stall: float) -> int:
    """Send a repeating pattern until *limit* bytes or no progress for *stall* seconds."""
    chunk = bytes(range(256)) * 256
    sent = 0
    sock.setblocking(False)
    while sent < limit:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            if not select.select([], [sock], [], stall)[1]:
                break
    sock.setblocking(True)
    return sent


@pytest.mark.system
def test_client_sending_100_mib_without_reading_grows_server_memory_little(
    echo_process: StartProcess,
) -> None:
    server = echo_process("--idle-timeout", "1")
    # Warm up: one connection through the whole path, so that what is measured
    # next is the cost of the slow reader, not of the first connection.
    with server.connect() as warm:
        warm.sendall(b"w" * MiB)
        warm.shutdown(socket.SHUT_WR)
        received = 0
        while chunk := warm.recv(MiB):
            received += len(chunk)
        assert received == MiB
    before = server.rss_kib()
    with server.connect() as client:
        sent = send_until_blocked(client, 100 * MiB, stall=0.5)
        growth = server.rss_kib() - before
        # TCP flow control pushed back: only what fits in the socket buffers left.
        assert sent < 30 * MiB
        assert growth < 3 * 1024, f"server RSS grew {growth} KiB"
        print(f"sent {sent} bytes; server RSS {before} KiB, grew {growth} KiB")
        # The idle timeout ends it: the echoes sent before the stall are
        # intact, then a clean EOF.
        echoed = bytearray()
        while chunk := client.recv(MiB):
            echoed += chunk
    server.wait_for(r"reason=idle", timeout=10)
    pattern = bytes(range(256))
    assert 0 < len(echoed) <= sent
    assert echoed == (pattern * (len(echoed) // 256 + 1))[: len(echoed)]
    assert server.stop() == 0


# ---- 7. shutdown under load, on the real command ----


class StreamingClient:
    """Sends random chunks while reading the echoes, until the server's EOF."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sent = bytearray()
        self.received = bytearray()
        self.eof_at: float | None = None

    async def run(self, port: int, started: Callable[[], None]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(self._send, stream)
            announced = False
            while chunk := await stream.receive_some():
                self.received += chunk
                if not announced:
                    announced = True
                    started()
            self.eof_at = trio.current_time()
            nursery.cancel_scope.cancel()

    async def _send(self, stream: trio.SocketStream) -> None:
        while True:
            chunk = self.rng.randbytes(self.rng.randrange(1, 4096))
            # Recorded first: a send cut short by the EOF still counts as sent.
            self.sent += chunk
            await stream.send_all(chunk)
            await trio.sleep(0.02)


@pytest.mark.system
async def test_sigterm_under_load_gives_every_client_a_prefix_then_eof(
    echo_process: StartProcess,
    fd_headroom: Callable[[int], None],
) -> None:
    grace = 2.0
    fd_headroom(1024)
    server = await trio.to_thread.run_sync(
        lambda: echo_process("--grace", str(grace), "--max-connections", "300")
    )
    clients = [StreamingClient(seed) for seed in range(200)]
    streaming = 0
    everyone_streaming = trio.Event()

    def started() -> None:
        nonlocal streaming
        streaming += 1
        if streaming == len(clients):
            everyone_streaming.set()

    # Three clients never read: the server's echoes to them stay blocked until
    # the grace period ends and they are cancelled.
    stuck = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    stuck_ports = [sock.getsockname()[1] for sock in stuck]
    for sock in stuck:
        send_until_blocked(sock, 64 * MiB, stall=0.2)
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.run, server.port, started)
        with trio.fail_after(20):
            await everyone_streaming.wait()
        signalled = trio.current_time()
        server.proc.send_signal(signal.SIGTERM)
        status = await trio.to_thread.run_sync(server.proc.wait, grace + 5)
        exited = trio.current_time() - signalled
    for sock in stuck:
        sock.close()
    assert status == 0
    # The stuck clients never read nor close: after the grace, each connection
    # still closes cleanly, draining for at most drain_timeout (2 s).
    assert exited < grace + 2 + 1, f"exited {exited:.2f} s after SIGTERM"
    for client in clients:
        assert client.eof_at is not None
        assert client.eof_at - signalled < grace
        assert len(client.received) > 0
        assert client.received == client.sent[: len(client.received)]
    await trio.to_thread.run_sync(server._reader.join, 5)
    log = server.log
    assert "Traceback" not in log
    closes = re.findall(r"closed 127\.0\.0\.1:(\d+): .* reason=(\S+)", log)
    assert len(closes) == len(clients) + len(stuck)
    assert {reason for _, reason in closes} == {"shutdown"}
    assert set(stuck_ports) <= {int(port) for port, _ in closes}


# ---- 8. many concurrent connections ----


async def test_two_thousand_concurrent_connections_each_echo(
    echo_server_factory: EchoServerFactory, fd_headroom: Callable[[int], None]
) -> None:
    n = 2000
    fd_headroom(2 * n + 256)
    server = await echo_server_factory(max_connections=n, idle_timeout=None)
    streams: list[trio.SocketStream] = []
    all_open = trio.Event()

    async def client(i: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        streams.append(stream)
        async with stream:
            await stream.send_all(b"hello %05d" % i)
            assert await receive_exactly(stream, 11, limit=30) == b"hello %05d" % i
            await all_open.wait()
            await stream.send_all(b"again %05d" % i)
            assert await receive_exactly(stream, 11, limit=30) == b"again %05d" % i
            await stream.send_eof()
            assert await receive_until_eof(stream, limit=30) == b""

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(client, i)
            await wait_until(lambda: server.statistics().active == n, limit=30)
            all_open.set()
        await wait_until(lambda: server.statistics().closed == n, limit=30)
    stats = server.statistics()
    assert stats.accepted == n
    assert stats.closed_by_reason == {"eof": n}
    assert stats.bytes_in == stats.bytes_out == 2 * 11 * n
