"""Fixtures and helpers shared by the integration tests.

Servers come from the package's own pytest plugin (``echo_server`` and
``echo_server_factory``), loaded through its entry point as for any user.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from trio_echo import EchoServer, ListenerConfig, ServerConfig
from trio_echo._config import replace_fields

from .processes import LoggingProcess

pytest_plugins = ["pytester"]


def make_config(**overrides: Any) -> ServerConfig:
    """A config on 127.0.0.1 and an ephemeral port, with fields replaced by bare name
    (as ``echo_server_factory`` does), for tests that run :func:`serve` themselves."""
    return replace_fields(ServerConfig(listener=ListenerConfig(port=0)), **overrides)


Connect = Callable[[EchoServer], Awaitable[trio.SocketStream]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open client streams to a server; every one is closed when the test ends."""
    streams: list[trio.SocketStream] = []

    async def open_client(server: EchoServer) -> trio.SocketStream:
        host, port = server.addresses[0]
        stream = await trio.open_tcp_stream(host, port)
        streams.append(stream)
        return stream

    yield open_client
    for stream in streams:
        await trio.aclose_forcefully(stream)


async def receive_until_eof(stream: trio.abc.ReceiveStream, limit: float = 10.0) -> bytes:
    """Everything the peer sends until its EOF; a reset raises BrokenResourceError."""
    received = bytearray()
    with trio.fail_after(limit):
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int, limit: float = 10.0) -> bytes:
    received = bytearray()
    with trio.fail_after(limit):
        while len(received) < n:
            chunk = await stream.receive_some(n - len(received))
            if not chunk:
                raise EOFError(f"EOF after {len(received)} of {n} bytes")
            received += chunk
    return bytes(received)


def reset_on_close(sock: socket.socket | trio.socket.SocketType) -> None:
    """Make closing *sock* send a TCP reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll *predicate* (state the server updates asynchronously) until true, bounded."""
    with trio.fail_after(limit):
        # Polling, bounded: the kernel delivers the client's actions to the server
        # asynchronously, and the server exposes no event per counter.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


Spawn = Callable[..., LoggingProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start LoggingProcesses (same arguments); those still running when the test
    ends are killed by PID."""
    started: list[LoggingProcess] = []

    def start(*args: Any, **kwargs: Any) -> LoggingProcess:
        process = LoggingProcess(*args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
