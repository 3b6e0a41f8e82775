"""serve_in_thread(): a server in a background thread, used from sync, asyncio and trio code."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest
import trio

from trio_echo import ListenerConfig, ServerConfig, TLSConfig, UDPConfig, serve_in_thread


def echo_once(host: str, port: int, payload: bytes) -> bytes:
    """Send *payload*, half-close, read until EOF (a blocking client)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


def test_ready_on_enter_and_stopped_on_exit() -> None:
    with serve_in_thread() as server:
        assert server.host == "127.0.0.1"
        assert server.addresses == ((server.host, server.port),)
        assert echo_once(server.host, server.port, b"hello\n") == b"hello\n"
        assert server.statistics().bytes_in == 6
        assert "running" in repr(server)
    # Joined and closed: the port refuses, the counters are final.
    assert not any(t.name == "trio-echo server" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=10)
    assert server.statistics().closed == 1
    assert "stopped" in repr(server)
    server.shutdown()  # idempotent


def test_overrides_apply_on_top_of_a_config() -> None:
    config = ServerConfig(listener=ListenerConfig(host="127.0.0.1", port=0, grace=0))
    with serve_in_thread(config=config, rounds=1, framing="line") as server:
        assert server.config.listener.grace == 0
        assert server.config.connection.rounds == 1
        assert echo_once(server.host, server.port, b"a\nb\n") == b"a\n"
        assert server.statistics().closed_by_reason == {"rounds": 1}


def test_config_by_position_without_overrides() -> None:
    config = ServerConfig(listener=ListenerConfig(host="127.0.0.1", port=0, backlog=7))
    with serve_in_thread(config) as server:
        assert server.config is config


def test_start_errors_raise_in_the_callers_thread() -> None:
    with pytest.raises(TypeError, match="unknown config field 'roundz'"):
        serve_in_thread(roundz=1).__enter__()
    with pytest.raises(ValueError, match="rounds"), serve_in_thread(rounds=0):
        pass
    with serve_in_thread() as server, pytest.raises(OSError, match="in use"):  # noqa: SIM117
        with serve_in_thread(port=server.port):
            pass


def test_a_missing_tls_file_is_an_os_error(tmp_path: Path) -> None:
    tls = TLSConfig(certfile=tmp_path / "missing.pem")
    with pytest.raises(OSError, match=r"missing\.pem"), serve_in_thread(tls=tls):
        pass


def test_an_error_in_the_server_thread_is_raised_at_exit() -> None:
    def crash_the_server() -> None:
        with serve_in_thread() as server:
            # Closing the listening socket under the accept loop makes serve() fail.
            server._call_in_server(server._server.listeners[0].socket.close)
            server._thread.join(10)
            assert not server._thread.is_alive()

    with pytest.raises(Exception) as info:  # noqa: PT011 - an ExceptionGroup from trio
        crash_the_server()
    assert info.group_contains(trio.ClosedResourceError)


def test_shutdown_inside_the_block_then_exit() -> None:
    with serve_in_thread() as server:
        server.shutdown()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, server.port), timeout=10)
    assert server.statistics().accepted == 0


def test_usable_from_an_asyncio_event_loop() -> None:
    async def client() -> bytes:
        with serve_in_thread() as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"ping")
            await writer.drain()
            reply = await reader.readexactly(4)
            writer.close()
            await writer.wait_closed()
            assert server.statistics().bytes_out == 4
        return reply

    assert asyncio.run(client()) == b"ping"


async def test_usable_from_another_trio_run() -> None:
    with serve_in_thread() as server:
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            await stream.send_all(b"pong")
            assert await stream.receive_some() == b"pong"
        assert server.statistics().accepted == 1


def test_udp_and_a_unix_socket_in_a_thread(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    with serve_in_thread(udp=UDPConfig(), unix=path) as server:
        assert server.udp_addresses == server.addresses
        assert server.unix_path == path
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"datagram", server.udp_addresses[0])
            assert client.recv(100) == b"datagram"
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(path)
            client.sendall(b"stream")
            assert client.recv(100) == b"stream"
    udp = server.statistics().udp
    assert udp is not None
    assert udp.echoed == 1
    assert not Path(path).exists()
