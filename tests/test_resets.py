"""Resets everywhere: each ends only its own connection, with reason ``reset``, quietly."""

from __future__ import annotations

import logging

import pytest
import trio

from trio_echo import EchoServer, serve
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    Connect,
    make_config,
    receive_exactly,
    receive_until_eof,
    reset_on_close,
    wait_until,
)


@pytest.fixture(autouse=True)
def quiet_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_echo")


def assert_quiet(caplog: pytest.LogCaptureFixture, allow: str = "") -> None:
    """No traceback and nothing above INFO (but *allow*): a reset is routine."""
    for record in caplog.records:
        message = record.getMessage()
        assert record.exc_info is None, message
        assert record.levelno <= logging.INFO or (allow and allow in message), message


def reset(stream: trio.SocketStream) -> None:
    reset_on_close(stream.socket)
    stream.socket.close()


async def assert_unaffected(bystander: trio.SocketStream, tag: bytes) -> None:
    await bystander.send_all(tag)
    assert await receive_exactly(bystander, len(tag)) == tag


async def fill_until_blocked(stream: trio.SocketStream) -> int:
    """Send without reading until the send blocks: the server is then blocked
    sending its echo, and has stopped reading."""
    sent = 0
    while True:
        with trio.move_on_after(0.2) as blocked:
            await stream.send_all(b"z" * 65536)
        if blocked.cancelled_caught:
            return sent
        sent += 65536


async def test_reset_while_server_is_sending(
    connect: Connect, echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory()
    bystander = await connect(server)
    victim = await connect(server)
    assert await fill_until_blocked(victim) > 0
    reset(victim)
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"reset": 1}
    await assert_unaffected(bystander, b"after a reset mid-send")
    assert_quiet(caplog)


async def test_reset_while_server_is_receiving(
    connect: Connect, echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory(framing="line")
    bystander = await connect(server)
    victim = await connect(server)
    await victim.send_all(b"a partial li")
    await wait_until(lambda: server.statistics().bytes_in == 12)
    reset(victim)
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"reset": 1}
    await assert_unaffected(bystander, b"after a reset mid-receive\n")
    assert_quiet(caplog)


async def test_reset_right_after_connect(
    connect: Connect, echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory()
    bystander = await connect(server)
    for _ in range(20):
        reset(await trio.open_tcp_stream("127.0.0.1", server.port))
    await wait_until(lambda: server.statistics().closed == 20)
    assert server.statistics().closed_by_reason == {"reset": 20}
    await assert_unaffected(bystander, b"after 20 resets")
    assert_quiet(caplog)


async def test_reset_while_waiting_in_the_backlog(
    connect: Connect, echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory(max_connections=1)
    holder = await connect(server)
    await assert_unaffected(holder, b"holding the only slot")
    # Connected in the kernel, reset before the server ever accepted it.
    reset(await trio.open_tcp_stream("127.0.0.1", server.port))
    await wait_until(lambda: server.statistics().limit_waits >= 1)
    await holder.send_eof()
    assert await receive_until_eof(holder) == b""
    await wait_until(lambda: server.statistics().closed == 2)
    assert server.statistics().closed_by_reason == {"eof": 1, "reset": 1}
    late = await connect(server)
    await assert_unaffected(late, b"served after the reset one")
    assert_quiet(caplog, allow="connection limit reached")


async def test_reset_during_shutdown(
    connect: Connect, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server: EchoServer = await nursery.start(serve, make_config(grace=30))
    bystander = await connect(server)
    victim = await connect(server)
    await assert_unaffected(bystander, b"before")
    assert await fill_until_blocked(victim) > 0
    server.request_shutdown()
    # The bystander was waiting for input: it gets a clean EOF at once.
    assert await receive_until_eof(bystander) == b""
    await bystander.aclose()
    # The victim's echo is still blocked: the grace period is running.
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().active == 1
    reset(victim)
    with trio.fail_after(5):
        await server.wait_stopped()
    assert server.statistics().closed_by_reason == {"shutdown": 1, "reset": 1}
    assert_quiet(caplog)
