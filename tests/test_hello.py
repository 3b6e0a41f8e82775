"""``--hello`` (``_hello``): a greeting once at connection open, before any echo."""

from __future__ import annotations

import os
import signal
import socket

import pytest
import trio

from trio_echo import ConnectionConfig
from trio_echo._cli_ops import unescape
from trio_echo._hello import render_hello
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    Certificates,
    Connect,
    Spawn,
    StartProcess,
    receive_exactly,
    receive_until_eof,
)
from .processes import TRIO_ECHO, kill_if_running


def test_placeholders_are_filled_for_this_process() -> None:
    text = "{hostname} {pid} {worker} {port} {{literal}}"
    expected = f"{socket.gethostname()} {os.getpid()} 3 9999 {{literal}}"
    assert render_hello(text, port=9999, worker=3) == expected.encode()
    assert render_hello("héllo", port=0, worker=0) == "héllo".encode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{host}", "hello has an unknown placeholder {host}; known: {hostname}, {pid}"),
        ("{0}", "unknown placeholder {0}"),
        ("{", "hello is not a valid template"),
        ("{port!x}", "hello is not a valid template"),
    ],
)
def test_a_bad_template_is_one_line_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^hello ") as error:
        ConnectionConfig(hello=text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_command_line_understands_backslash_escapes() -> None:
    assert unescape(r"hi\n\t\r\\x\q") == "hi\n\t\r\\x\\q"
    assert unescape("trailing\\") == "trailing\\"


async def test_greeting_first_then_the_echo_and_not_counted(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    server = await echo_server_factory(hello="hello from {port}\n", rounds=1)
    client = await connect(server)
    greeting = f"hello from {server.port}\n".encode()
    # Before the client sends anything.
    assert await receive_exactly(client, len(greeting)) == greeting
    await client.send_all(b"ping")
    assert await receive_until_eof(client) == b"ping"
    stats = server.statistics()
    assert (stats.bytes_out, stats.rounds) == (4, 1)


async def test_off_by_default_the_echo_stays_pure(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    server = await echo_server_factory(rounds=1)
    client = await connect(server)
    await client.send_all(b"ping")
    assert await receive_until_eof(client) == b"ping"


async def test_over_tls_after_the_handshake(
    echo_server_factory: EchoServerFactory, certificates: Certificates
) -> None:
    server = await echo_server_factory(
        hello="worker {worker}\n", rounds=1, worker=2, tls=certificates.tls()
    )
    raw = await trio.open_tcp_stream("127.0.0.1", server.port)
    client = trio.SSLStream(raw, certificates.client_context(), server_hostname="127.0.0.1")
    async with client:
        assert await receive_exactly(client, 9) == b"worker 2\n"
        await client.send_all(b"x")
        assert await receive_until_eof(client) == b"x"


async def test_with_faults_the_greeting_is_not_delayed_as_an_echo(
    echo_server_factory: EchoServerFactory, connect: Connect, autojump_clock: trio.abc.Clock
) -> None:
    server = await echo_server_factory(hello="hi\n", latency=30.0, rounds=1)
    client = await connect(server)
    start = trio.current_time()
    assert await receive_exactly(client, 3) == b"hi\n"
    assert trio.current_time() - start < 1


@pytest.mark.system
def test_the_console_script_greets_with_its_identity(echo_process: StartProcess) -> None:
    server = echo_process("--hello", r"{hostname}/{worker}/{pid}:{port}\n", "--rounds", "1")
    with server.connect() as client:
        client.sendall(b"x")
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(100):
            received += chunk
    assert received == f"{socket.gethostname()}/0/{server.pid}:{server.port}\nx".encode()
    assert server.stop() == 0


@pytest.mark.system
def test_each_worker_greets_with_its_number(spawn: Spawn) -> None:
    parent = spawn([TRIO_ECHO, "--port", "0", "--workers", "2", "--hello", r"w{worker}\n"])
    port = int(parent.wait_for(r"starting 2 workers on 127\.0\.0\.1:(\d+)")[1])
    pids = [int(parent.wait_for(rf"started worker {n} \(pid (\d+)\)")[1]) for n in (1, 2)]
    try:
        for n in (1, 2):
            parent.wait_for(rf"\[worker {n}\] listening on")
        seen = set()
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                seen.add(client.recv(3))
            if len(seen) == 2:
                break
        assert seen == {b"w1\n", b"w2\n"}
        parent.signal(signal.SIGTERM)
        assert parent.finish()[0] == 0
    finally:
        kill_if_running(pids)
