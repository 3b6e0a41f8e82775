"""The accept side under pressure: the connection limit and running out of descriptors."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
import trio
import trio.testing

from trio_echo import EchoServer, ServerStatistics
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    Connect,
    StartProcess,
    make_config,
    receive_exactly,
    receive_until_eof,
    wait_until,
)

LIMIT_WARNING = "connection limit reached"


def assert_adds_up(stats: ServerStatistics) -> None:
    assert stats.accepted == stats.closed + stats.active, stats
    assert stats.closed == sum(stats.closed_by_reason.values()), stats


# ---- 1. the connection limit ----


async def test_limit_keeps_extra_clients_in_backlog_without_spinning(
    connect: Connect,
    echo_server_factory: EchoServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    accept_calls = 0
    original_accept = trio.SocketListener.accept

    async def counting_accept(self: trio.SocketListener) -> trio.SocketStream:
        nonlocal accept_calls
        accept_calls += 1
        return await original_accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", counting_accept)
    server = await echo_server_factory(max_connections=3)
    served = [await connect(server) for _ in range(3)]
    for i, stream in enumerate(served):
        await stream.send_all(b"served %d" % i)
        assert await receive_exactly(stream, 8) == b"served %d" % i
    waiting = [await connect(server) for _ in range(5)]
    for i, stream in enumerate(waiting):
        await stream.send_all(b"waited %d" % i)
    await wait_until(lambda: server.statistics().limit_waits >= 1)
    # While every slot is taken the accept loop sleeps: no further accept()
    # call, nobody accepted only to be dropped, nothing echoed to the waiters.
    calls_when_full = accept_calls
    with trio.move_on_after(0.5):
        await waiting[0].receive_some()
        pytest.fail("a client was served beyond max_connections")
    assert accept_calls == calls_when_full == 3
    stats = server.statistics()
    assert (stats.accepted, stats.active, stats.closed) == (3, 3, 0)
    # Each freed slot lets exactly one waiting client in (the backlog is FIFO),
    # which then gets the bytes it sent while it waited: it was kept, not reset.
    in_order = served + waiting
    for i, stream in enumerate(waiting):
        await in_order[i].send_eof()
        assert await receive_until_eof(in_order[i]) == b""
        assert await receive_exactly(stream, 8) == b"waited %d" % i
    for stream in waiting[-3:]:
        await stream.send_eof()
        assert await receive_until_eof(stream) == b""
    await wait_until(lambda: server.statistics().closed == 8)
    stats = server.statistics()
    assert stats.closed_by_reason == {"eof": 8}
    assert stats.limit_waits >= 5
    assert_adds_up(stats)
    # The limit was hit again and again, but the warning is rate-limited.
    warnings = [r for r in caplog.records if LIMIT_WARNING in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


async def test_statistics_add_up_at_every_instant(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory()
    clients = 30
    snapshots = 0

    async def watch() -> None:
        nonlocal snapshots
        # Checked at every scheduling step, including the one between accept()
        # returning and the connection task starting.
        while server.statistics().active < clients:
            assert_adds_up(server.statistics())
            snapshots += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        for _ in range(clients):
            await connect(server)
    assert snapshots > clients
    assert_adds_up(server.statistics())


# ---- 2. accept() errors: a fake listener and a virtual clock ----


class FakeListener(trio.abc.Listener[trio.SocketStream]):
    """A listener whose accept() raises the given errors, then hands out *streams*."""

    def __init__(
        self, sock: trio.socket.SocketType, errors: list[OSError], streams: list[Any]
    ) -> None:
        self.socket = sock
        self.errors = errors
        self.streams = streams
        self.accept_times: list[float] = []

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        self.accept_times.append(trio.current_time())
        if self.errors:
            raise self.errors.pop(0)
        if not self.streams:
            await trio.sleep_forever()
        return cast(trio.SocketStream, self.streams.pop(0))

    async def aclose(self) -> None:
        self.socket.close()
        await trio.lowlevel.checkpoint()


async def fake_server(
    nursery: trio.Nursery, errors: list[OSError], streams: list[Any], **overrides: Any
) -> tuple[EchoServer, FakeListener]:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    listener = FakeListener(sock, errors, streams)
    server = EchoServer(make_config(**overrides), [cast(trio.SocketListener, listener)])
    await nursery.start(server.run)
    return server, listener


def socketpair_stream() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
async def test_accept_capacity_errors_are_retried_every_100_ms(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    stream, client = socketpair_stream()
    with client:
        await check_accept_retries(nursery, caplog, code, stream, client)


async def check_accept_retries(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    code: int,
    stream: trio.SocketStream,
    client: socket.socket,
) -> None:
    errors = [OSError(code, "fake") for _ in range(5)]
    server, listener = await fake_server(nursery, errors, [stream])
    await wait_until(lambda: server.statistics().active == 1)
    # Five failures, the success, then the call waiting for the next client.
    times = listener.accept_times
    assert len(times) == 7
    gaps = [b - a for a, b in itertools.pairwise(times[:6])]
    assert gaps == pytest.approx([0.1] * 5)
    assert server.statistics().accept_errors == 5
    # Five failures within half a second: one warning, naming the error.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"accept failed: {os.strerror(code)}; retrying in 0.1 s"]
    # And the connection accepted afterwards is served normally.
    client.sendall(b"after the storm")
    await trio.lowlevel.wait_readable(client)
    assert client.recv(100) == b"after the storm"


async def test_accept_errors_and_limit_warn_independently(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, client = socketpair_stream()
    with client:
        server, _ = await fake_server(
            nursery, [OSError(errno.EMFILE, "fake")], [stream], max_connections=1
        )
        await wait_until(lambda: server.statistics().limit_waits == 1)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert messages[0].startswith("accept failed")
    assert messages[1].startswith(LIMIT_WARNING)


async def test_other_accept_errors_propagate(nursery: trio.Nursery) -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="fake EBADF"), flatten_subgroups=True):
        async with trio.open_nursery() as inner:
            await fake_server(inner, [OSError(errno.EBADF, "fake EBADF")], [])


# ---- 2. file descriptors: EMFILE for real (the CLI's RLIMIT_NOFILE: test_fdlimit.py) ----


def echo_once(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(len(payload) - len(received))
        if not chunk:
            break
        received += chunk
    return received


def wait_for_value(read: Callable[[], int], target: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while read() != target:
        assert time.monotonic() < deadline, f"still {read()}, not {target}"
        time.sleep(0.01)


@pytest.mark.system
def test_running_out_of_fds_neither_crashes_nor_spins(echo_process: StartProcess) -> None:
    fd_limit = 40
    server = echo_process("--max-connections", "200", nofile=(fd_limit, fd_limit))
    free = fd_limit - server.open_fds()
    assert free > 5
    clients = [server.connect() for _ in range(free + 8)]
    try:
        # The first `free` clients take every descriptor; the rest wait in the
        # backlog while accept() fails with EMFILE.
        for i, sock in enumerate(clients[:free]):
            assert echo_once(sock, b"early %02d" % i) == b"early %02d" % i
        server.wait_for("accept failed: Too many open files; retrying in 0.1 s")
        cpu_before = server.cpu_seconds()
        time.sleep(1.0)  # the window in which a spinning accept loop would burn CPU
        cpu_used = server.cpu_seconds() - cpu_before
        print(f"{cpu_used:.3f} s CPU in 1 s while out of descriptors")
        assert cpu_used < 0.15, f"{cpu_used:.2f} s CPU in 1 s while out of descriptors"
        assert server.count("accept failed") == 1  # rate-limited
        # Descriptors free up: every waiting client is served, byte-exact.
        for sock in clients[:free]:
            sock.close()
        for i, sock in enumerate(clients[free:]):
            assert echo_once(sock, b"late %02d" % i) == b"late %02d" % i
    finally:
        for sock in clients:
            sock.close()
    assert server.stop() == 0
    assert "Traceback" not in server.log
    stats = re.search(r"stopped: (\d+) connections", server.log)
    assert stats is not None
    assert int(stats.group(1)) == len(clients)
