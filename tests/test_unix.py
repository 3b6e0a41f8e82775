"""Stream echo over a Unix socket (``trio_echo._unix`` and the server's use of it).

The socket file's life (stale replaced, live refused, mode, removal) is tested
on :func:`bind_unix` directly; the echo itself end to end through
:func:`trio_echo.serve`, with the same settings as TCP.  (The connection loop
over a Unix stream socket is also what ``make_connection("socket")`` runs: a
``socketpair()`` is one.)
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from trio_echo import EchoServer, Faults
from trio_echo._unix import bind_unix
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Spawn, receive_until_eof, wait_until
from .processes import TRIO_ECHO


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "echo.sock")


def test_a_stale_socket_file_is_replaced(path: str) -> None:
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays; nobody listens
    sock, file = bind_unix(path, mode=None, backlog=5)
    with sock:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
        file.remove()
    assert not os.path.exists(path)


def test_a_live_socket_is_not_replaced(path: str) -> None:
    live, file = bind_unix(path, mode=None, backlog=5)
    with live, pytest.raises(OSError, match="in use by a live server") as info:
        bind_unix(path, mode=None, backlog=5)
    assert info.value.errno == errno.EADDRINUSE
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    file.remove()


def test_a_file_that_is_not_a_socket_is_left_alone(path: str) -> None:
    Path(path).write_text("precious")
    with pytest.raises(OSError, match="exists and is not a socket") as info:
        bind_unix(path, mode=None, backlog=5)
    assert info.value.errno == errno.EEXIST
    assert Path(path).read_text() == "precious"


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
def test_mode_is_applied(path: str, mode: int) -> None:
    sock, file = bind_unix(path, mode=mode, backlog=5)
    with sock:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    file.remove()


def test_removal_leaves_a_file_that_replaced_ours(path: str) -> None:
    sock, file = bind_unix(path, mode=None, backlog=5)
    sock.close()
    os.unlink(path)
    Path(path).write_text("someone else's")
    file.remove()
    assert Path(path).read_text() == "someone else's"


def test_a_missing_directory_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        bind_unix(str(tmp_path / "no" / "such.sock"), mode=None, backlog=5)


async def unix_server(factory: EchoServerFactory, path: str, **overrides: Any) -> EchoServer:
    overrides.setdefault("tcp", False)
    return await factory(unix=path, **overrides)


async def test_line_framing_and_rounds_over_unix(
    echo_server_factory: EchoServerFactory, path: str
) -> None:
    server = await unix_server(echo_server_factory, path, rounds=2, framing="line")
    assert server.unix_path == path
    assert server.addresses == ()
    with pytest.raises(LookupError):
        _ = server.port
    with pytest.raises(LookupError):
        _ = server.host
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"one\ntw")
        await stream.send_all(b"o\nthree\n")
        assert await receive_until_eof(stream) == b"one\ntwo\n"
    await wait_until(lambda: server.statistics().closed == 1)
    stats = server.statistics()
    assert (stats.accepted, stats.rounds, dict(stats.closed_by_reason)) == (1, 2, {"rounds": 1})


async def test_large_echo_over_unix_is_exact(
    echo_server_factory: EchoServerFactory, path: str
) -> None:
    await unix_server(echo_server_factory, path)
    payload = os.urandom(1 << 20)
    stream = await trio.open_unix_socket(path)
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        nursery.start_soon(send)
        assert await receive_until_eof(stream) == payload


async def test_idle_timeout_over_unix(
    autojump_clock: MockClock, echo_server_factory: EchoServerFactory, path: str
) -> None:
    server = await unix_server(echo_server_factory, path, idle_timeout=30)
    stream = await trio.open_unix_socket(path)
    async with stream:
        start = trio.current_time()
        assert await receive_until_eof(stream, limit=60) == b""
        assert 30 <= trio.current_time() - start <= 32
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"idle": 1}


async def test_faults_over_unix(
    autojump_clock: MockClock, echo_server_factory: EchoServerFactory, path: str
) -> None:
    server = await unix_server(
        echo_server_factory, path, faults=Faults(latency=0.25, reset_after=5)
    )
    stream = await trio.open_unix_socket(path)
    async with stream:
        start = trio.current_time()
        await stream.send_all(b"0123456789")
        # A Unix socket has no reset: the bytes before the count, then the end.
        assert await receive_until_eof(stream) == b"01234"
        assert trio.current_time() - start == pytest.approx(0.25)
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"reset-injected": 1}


async def test_tcp_and_unix_share_one_connection_limit(
    echo_server_factory: EchoServerFactory, path: str
) -> None:
    server = await unix_server(echo_server_factory, path, tcp=True, max_connections=1)
    first = await trio.open_unix_socket(path)
    await first.send_all(b"a")
    assert await first.receive_some() == b"a"
    second = await trio.open_tcp_stream("127.0.0.1", server.port)
    await second.send_all(b"b")
    with trio.move_on_after(0.3):
        await second.receive_some()
        pytest.fail("a second connection was served beyond max_connections")
    await first.aclose()
    assert await second.receive_some() == b"b"
    await second.aclose()


async def test_shutdown_finishes_connections_and_removes_the_file(
    echo_server_factory: EchoServerFactory, path: str
) -> None:
    server = await unix_server(echo_server_factory, path)
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"hello")
        assert await stream.receive_some() == b"hello"
        await server.shutdown()
        assert await receive_until_eof(stream) == b""
    assert not await trio.Path(path).exists()
    assert server.statistics().closed_by_reason == {"shutdown": 1}


@pytest.mark.system
def test_trio_echo_bench_drives_the_unix_socket(spawn: Spawn, tmp_path: Path) -> None:
    path = tmp_path / "bench.sock"
    server = spawn([TRIO_ECHO, "--unix", str(path)])
    server.wait_for("listening on unix:")
    bench = subprocess.run(
        [TRIO_ECHO, "bench", f"unix:{path}", "--connections", "2", "--count", "300"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bench.returncode == 0, bench.stderr
    assert re.search(r"round trips\s+300 ", bench.stdout), bench.stdout
    assert re.search(r"errors\s+none", bench.stdout), bench.stdout
    server.signal(signal.SIGTERM)
    assert server.finish()[0] == 0


async def test_hello_over_unix_has_port_0(
    echo_server_factory: EchoServerFactory, path: str
) -> None:
    await unix_server(echo_server_factory, path, hello="port {port}\n", rounds=1)
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"x")
        assert await receive_until_eof(stream) == b"port 0\nx"
