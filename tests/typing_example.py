"""User code, type-checked with ``mypy --strict`` in CI, so the types users see are right.

It uses only the public API: embedding ``serve`` and the pytest plugin's fixtures.
(The module name does not start with ``test_``: pytest does not collect it;
test_public_api.py runs it.)
"""

from __future__ import annotations

import socket

import trio

import trio_echo
from trio_echo.pytest_plugin import EchoServerFactory, ThreadedEchoServerFactory


async def embed() -> trio_echo.ServerStatistics:
    """Start a server, read its port, run a client, shut down gracefully."""
    config = trio_echo.ServerConfig(
        listener=trio_echo.ListenerConfig(port=0),
        connection=trio_echo.ConnectionConfig(rounds=1, framing="line"),
    )
    async with trio.open_nursery() as nursery:
        server: trio_echo.EchoServer = await nursery.start(trio_echo.serve, config)
        port: int = server.port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"typed\n")
            reply: bytes | bytearray = await stream.receive_some()
            assert reply == b"typed\n"
        await server.shutdown()
    return server.statistics()


async def check_client(echo_server: trio_echo.EchoServer) -> None:
    """A test body as a user writes it against the ``echo_server`` fixture."""
    host, port = echo_server.addresses[0]
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"


async def check_factory(echo_server_factory: EchoServerFactory) -> int:
    """A test body using ``echo_server_factory`` with config fields by name."""
    server = await echo_server_factory(rounds=3, framing="line", idle_timeout=5.0)
    closed: dict[str, int] = dict(server.statistics().closed_by_reason)
    return len(closed)


def framing_of(config: trio_echo.ConnectionConfig) -> trio_echo.Framing:
    return config.framing


def in_a_thread() -> trio_echo.ServerStatistics:
    """serve_in_thread() from synchronous code: a config, overrides on top."""
    config = trio_echo.ServerConfig(listener=trio_echo.ListenerConfig(host="127.0.0.1", port=0))
    with trio_echo.serve_in_thread(config, rounds=1) as server:
        handle: trio_echo.ThreadedEchoServer = server
        with socket.create_connection((handle.host, handle.port), timeout=5) as sock:
            sock.sendall(b"typed")
            assert sock.recv(5) == b"typed"
    return handle.statistics()


def check_threaded_factory(echo_server_factory: ThreadedEchoServerFactory) -> str:
    """A sync test body using the factory outside trio tests."""
    server = echo_server_factory(framing="line")
    return server.host
