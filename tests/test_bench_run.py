"""A bench run in process (trio_echo._bench.run, .loops, .connect): against
trio-echo, over TLS and the PROXY protocol, against servers that stall or
corrupt, in virtual time where timing matters."""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_echo import BenchConfig, BenchResult, Faults, ServerUnreachable, bench, parse_address
from trio_echo._bench.connect import causes, error_kind, error_reason
from trio_echo._bench.loops import side_by_side
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Certificates, reset_on_close, wait_until

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def config_for(port: int, **fields: Any) -> BenchConfig:
    return BenchConfig(address=parse_address(f"127.0.0.1:{port}"), **fields)


def virtual_ns() -> int:
    return round(trio.current_time() * 1e9)


async def serve(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def echo(stream: trio.SocketStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


# ---- against trio-echo ----


@pytest.mark.parametrize(("connections", "pipeline", "size"), [(1, 1, 64), (3, 4, 1000)])
async def test_closed_loop_counts_every_round_trip_and_byte(
    echo_server_factory: EchoServerFactory, connections: int, pipeline: int, size: int
) -> None:
    server = await echo_server_factory()
    config = config_for(
        server.port, connections=connections, pipeline=pipeline, size=size, count=200
    )
    result = await bench(config)
    assert (result.round_trips, result.bytes) == (200, 200 * size)
    assert result.connects == connections
    assert result.errors == {}
    assert result.failure is None
    assert result.ok
    assert 0 < result.latency.min <= result.latency.p50 <= result.latency.p99 <= result.latency.max
    assert result.rate == pytest.approx(200 / result.seconds)
    assert result.mode == "closed"
    # Each connection half-closed after its last echo: a clean end on the server.
    await wait_until(lambda: server.statistics().closed == connections)
    assert server.statistics().bytes_out == 200 * size
    assert set(server.statistics().closed_by_reason) == {"eof"}


async def test_messages_larger_than_the_socket_buffers_do_not_deadlock(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory()
    size = 4 << 20
    with trio.fail_after(20):
        result = await bench(config_for(server.port, size=size, pipeline=2, count=6))
    assert result.ok
    assert result.bytes == 6 * size


async def test_over_tls_with_the_servers_ca(
    echo_server_factory: EchoServerFactory, certificates: Certificates
) -> None:
    server = await echo_server_factory(tls=certificates.tls())
    for fields in ({"cafile": str(certificates.ca_file)}, {"insecure": True}):
        result = await bench(config_for(server.port, tls=True, count=20, **fields))
        assert result.ok, fields
        assert result.round_trips == 20


async def test_tls_with_an_untrusted_certificate_is_unreachable(
    echo_server_factory: EchoServerFactory, certificates: Certificates
) -> None:
    server = await echo_server_factory(tls=certificates.tls())
    with pytest.raises(ServerUnreachable, match=rf"127.0.0.1:{server.port}: .*CERTIFICATE_VERIFY"):
        await bench(config_for(server.port, tls=True, count=1))


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_through_a_proxy_protocol_server(
    echo_server_factory: EchoServerFactory, version: str
) -> None:
    server = await echo_server_factory(proxy_protocol=True)
    result = await bench(config_for(server.port, send_proxy=version, count=10, connections=2))
    assert result.ok
    assert result.round_trips == 10


@pytest.mark.parametrize(("version", "first"), [("v1", "0x50 (P)"), ("v2", "0x0d ('\\r')")])
@pytest.mark.parametrize("mode", [{}, {"rate": 1000.0}])
async def test_a_proxy_header_echoed_back_says_the_server_does_not_read_it(
    echo_server_factory: EchoServerFactory, version: str, first: str, mode: dict[str, Any]
) -> None:
    server = await echo_server_factory()  # no PROXY protocol: the header is echoed
    result = await bench(config_for(server.port, send_proxy=version, count=3, **mode))
    assert result.errors == {"mismatch": 1}
    assert result.failure is not None
    assert result.failure.startswith("connection 0: byte 0: expected ")
    assert result.failure.endswith(
        f"received {first} (the server echoed the PROXY {version} header: it does not read it)"
    )


async def test_ping_reports_each_round_trip_in_order(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory()
    seen: list[int] = []
    result = await bench(
        config_for(server.port, interval=0.01, count=4),
        on_round_trip=lambda sequence, latency: seen.append(sequence),
    )
    assert seen == [1, 2, 3, 4]
    assert result.mode == "ping"
    assert result.ok


async def test_connect_only_counts_connections(echo_server_factory: EchoServerFactory) -> None:
    server = await echo_server_factory()
    result = await bench(config_for(server.port, connect_only=True, connections=3, count=30))
    assert result.mode == "connect"
    assert result.ok
    assert result.connects == 30
    assert result.round_trips == 0
    assert result.connect.p50 > 0


async def test_a_unix_socket_server(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, [trio.SocketListener(listener)])
        result = await bench(BenchConfig(address=parse_address(f"unix:{path}"), count=10))
        nursery.cancel_scope.cancel()
    assert result.ok
    assert result.round_trips == 10


async def test_an_unreachable_server_is_one_line_naming_the_address() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ServerUnreachable) as caught:
        await bench(config_for(port, count=1))
    assert str(caught.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"


# ---- in virtual time ----


async def test_latency_is_the_servers_delay(
    autojump_clock: trio.testing.MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(faults=Faults(latency=0.02))
    result = await bench(config_for(server.port, count=5), clock=virtual_ns)
    assert result.latency.min == pytest.approx(20_000, rel=0.01)
    assert result.latency.max == pytest.approx(20_000, rel=0.01)


async def test_warmup_is_excluded_and_duration_bounds_the_run(
    autojump_clock: trio.testing.MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(faults=Faults(latency=0.01))
    config = config_for(server.port, warmup=0.5, duration=1.0)
    result = await bench(config, clock=virtual_ns)
    # 10 ms per round trip: 100 in the measured second, none of the 50 before.
    assert result.round_trips == pytest.approx(100, abs=1)
    assert result.seconds == pytest.approx(1.0)


async def test_open_loop_sends_on_schedule_whatever_the_echoes(
    autojump_clock: trio.testing.MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(faults=Faults(latency=0.05))
    config = config_for(server.port, rate=200.0, connections=2, duration=2.0)
    result = await bench(config, clock=virtual_ns)
    # Closed loop would manage 2 / 0.05 = 40/s; open loop keeps 200/s (the
    # server delays each read by 50 ms, so messages queue behind it).
    assert result.round_trips == 400
    assert result.latency.min == pytest.approx(50_000, rel=0.01)
    assert result.latency.max < 110_000


def stalling_echo(stall_from: float, stall_for: float) -> Handler:
    """An echo server that takes 10 ms per echo, and stops echoing for
    *stall_for* seconds at *stall_from*."""

    async def handler(stream: trio.SocketStream) -> None:
        start = trio.current_time() if not starts else starts[0]
        starts.append(start)
        while data := await stream.receive_some():
            if stall_from <= trio.current_time() - start < stall_from + stall_for:
                await trio.sleep_until(start + stall_from + stall_for)
            await trio.sleep(0.01)
            await stream.send_all(data)

    starts: list[float] = []
    return handler


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_stalled_server_shows_in_open_loop_and_hides_in_closed_loop(
    autojump_clock: trio.testing.MockClock, mode: str
) -> None:
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, stalling_echo(5.0, 1.0))
        fields: dict[str, Any] = {"rate": 100.0} if mode == "open" else {}
        result = await bench(config_for(port, duration=10.0, **fields), clock=virtual_ns)
        nursery.cancel_scope.cancel()
    assert result.ok
    if mode == "open":
        assert result.latency.p99 >= 500_000  # microseconds
    else:
        # One round trip took the whole second, the rest 10 ms: p99 sees nothing.
        assert result.latency.max >= 990_000
        assert result.latency.p99 < 11_000


async def test_an_echo_outstanding_past_the_timeout_fails_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def swallow(stream: trio.SocketStream) -> None:
        while await stream.receive_some():
            pass

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, swallow)
        result = await bench(config_for(port, count=3, timeout=2.0), clock=virtual_ns)
        nursery.cancel_scope.cancel()
    assert result.errors == {"timeout": 1}
    assert not result.ok
    assert result.failure == "connection 0: no echo within 2 s"


async def test_setting_stop_ends_the_run_early(
    autojump_clock: trio.testing.MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(faults=Faults(latency=0.01))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_after, stop, 3.0)
        result = await bench(config_for(server.port, duration=60.0), stop=stop, clock=virtual_ns)
    assert result.seconds == pytest.approx(3.0, abs=0.02)
    assert result.ok


async def stop_after(stop: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    stop.set()


# ---- servers that corrupt the echo ----


def corrupting(kind: str) -> Handler:
    """An echo server that misbehaves once it has echoed 100 bytes."""

    async def handler(stream: trio.SocketStream) -> None:
        echoed = 0
        while data := await stream.receive_some():
            if echoed + len(data) > 100 and echoed <= 100:
                at = 100 - echoed
                if kind == "wrong":
                    data = data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :]
                elif kind == "missing":
                    data = data[:at] + data[at + 1 :]
                elif kind == "extra":
                    data = data[:at] + b"\x00" + data[at:]
                elif kind == "close":
                    await stream.send_all(data[:at])
                    return
                elif kind == "reset":
                    await stream.send_all(data[:at])
                    reset_on_close(stream.socket)
                    return
            await stream.send_all(data)
            echoed += len(data)

    return handler


#: Every mode that echoes: the closed loop (one task for every connection) and
#: the paced modes (a task pair per connection, as over TLS).
ECHO_MODES = {
    "closed": {},
    "open": {"rate": 2000.0},
    "ping": {"interval": 0.001},
}


ECHO_LINES = {
    "close": "connection 0: closed by the server at byte 100 with \\d+ bytes",
    "reset": "connection 0: Connection reset by peer",
}


@pytest.mark.parametrize("mode", ECHO_MODES)
@pytest.mark.parametrize(
    ("kind", "errors", "line"),
    [
        ("wrong", {"mismatch": 1}, "connection 0: byte 100: expected 0x.. \\(.\\), received 0x"),
        ("missing", {"mismatch": 1}, "connection 0: byte 100: expected 0x"),
        ("extra", {"mismatch": 1}, "connection 0: byte 100: expected 0x.. \\(.\\), received 0x00"),
        ("close", {"closed": 1}, ECHO_LINES["close"]),
        ("reset", {"reset": 1}, ECHO_LINES["reset"]),
    ],
)
async def test_a_corrupting_server_fails_the_run_with_one_line(
    mode: str, kind: str, errors: dict[str, int], line: str
) -> None:
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, corrupting(kind))
        with trio.fail_after(10):
            result = await bench(config_for(port, count=10, **ECHO_MODES[mode]))
        nursery.cancel_scope.cancel()
    assert result.failure is not None
    if mode == "open" and kind in ("close", "reset"):
        # The open loop does not wait for echoes: a server that closes with
        # messages of ours unread resets (its kernel discards them), and our
        # next send may take the reset's error from the receiver, which then
        # reads an end of stream.  Either way, one line of one of the two kinds.
        errors, line = {
            "closed": ({"closed": 1}, ECHO_LINES["close"]),
            "reset": ({"reset": 1}, ECHO_LINES["reset"]),
        }[next(iter(result.errors), "none")]
    assert result.errors == errors
    assert len(result.failure.splitlines()) == 1
    assert re.match(line, result.failure), result.failure
    assert not result.ok


async def test_a_byte_after_the_last_echo_is_an_extra_byte() -> None:
    async def trailing(stream: trio.SocketStream) -> None:
        await echo(stream)
        await stream.send_all(b"X")

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, trailing)
        result = await bench(config_for(port, count=2))
        nursery.cancel_scope.cancel()
    assert result.errors == {"mismatch": 1}
    assert result.failure == (
        "connection 0: byte 128: expected no byte (only 128 sent), received 0x58 (X)"
    )


async def test_results_are_frozen(echo_server_factory: EchoServerFactory) -> None:
    server = await echo_server_factory()
    result = await bench(config_for(server.port, count=1))
    with pytest.raises(AttributeError):
        result.round_trips = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.errors["closed"] = 1  # type: ignore[index]
    assert isinstance(result, BenchResult)


async def test_progress_is_reported_every_half_second(
    autojump_clock: trio.testing.MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(faults=Faults(latency=0.01))
    seen: list[tuple[float, int, int]] = []
    await bench(
        config_for(server.port, duration=2.0),
        on_progress=lambda *figures: seen.append(figures),
        clock=virtual_ns,
    )
    assert [round(elapsed, 2) for elapsed, _, _ in seen[:3]] == [0.5, 1.0, 1.5]
    assert [trips for _, trips, _ in seen] == sorted(trips for _, trips, _ in seen)
    assert all(p99 == pytest.approx(10_000_000, rel=0.01) for _, _, p99 in seen[1:])


# ---- the task pair of a paced connection (loops.side_by_side) ----


async def test_side_by_side_raises_the_first_failure_itself_and_cancels_the_rest() -> None:
    cancelled: list[str] = []

    async def waits(pair: trio.CancelScope) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append("waits")

    async def fails(pair: trio.CancelScope) -> None:
        await trio.lowlevel.checkpoint()
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError, match=r"^reset$"):  # not an exception group
        await side_by_side(waits, fails)
    assert cancelled == ["waits"]

    async def done(pair: trio.CancelScope) -> None:
        pair.cancel()  # the work is done: end the pair

    await side_by_side(waits, done)
    assert cancelled == ["waits", "waits"]


# ---- how a failure is named (connect.error_kind, connect.error_reason) ----


def wrapped(cause: OSError) -> trio.BrokenResourceError:
    """The error trio raises for *cause* on a stream."""
    try:
        raise trio.BrokenResourceError from cause
    except trio.BrokenResourceError as exc:
        return exc


@pytest.mark.parametrize(
    ("cause", "kind", "reason"),
    [
        (ConnectionResetError(errno.ECONNRESET, "x"), "reset", "Connection reset by peer"),
        (BrokenPipeError(errno.EPIPE, "x"), "reset", "Broken pipe"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "x"), "refused", "Connection refused"),
    ],
)
def test_a_failure_is_named_through_trios_wrapping(cause: OSError, kind: str, reason: str) -> None:
    for exc in (cause, wrapped(cause)):
        assert error_kind(exc) == kind
        assert error_reason(exc) == reason
    assert list(causes(wrapped(cause)))[1] is cause
