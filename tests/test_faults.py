"""Injected faults: each test fails if its fault does not do exactly what it promises.

Timing tests run under ``autojump_clock`` over real loopback sockets: once
every task is blocked, trio jumps its clock to the next deadline, so delays of
seconds cost microseconds of wall time and are measured exactly.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_echo import ConnectionConfig, EchoServer, Faults, serve
from trio_echo._connection import Connection
from trio_echo._faults import FaultPlan, FaultTransport
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    Certificates,
    Connect,
    build_connection,
    make_config,
    receive_exactly,
    receive_until_eof,
    wait_until,
)
from .test_tls import open_tls

README = Path(__file__).parent.parent / "README.md"


async def receive_chunks(stream: trio.abc.ReceiveStream, n: int) -> list[bytes]:
    """Exactly *n* bytes, as the list of what each receive returned."""
    chunks: list[bytes] = []
    with trio.fail_after(60):
        while sum(map(len, chunks)) < n:
            chunk = await stream.receive_some(n - sum(map(len, chunks)))
            assert chunk, f"EOF after {sum(map(len, chunks))} of {n} bytes"
            chunks.append(bytes(chunk))
    return chunks


async def assert_nothing_arrives(stream: trio.abc.ReceiveStream, seconds: float) -> None:
    with trio.move_on_after(seconds) as scope:
        chunk = await stream.receive_some()
        pytest.fail(f"received {chunk!r} after the fault")
    assert scope.cancelled_caught


async def receive_until_reset(
    stream: trio.SocketStream, *, pause: float = 0.0, limit: float = 30
) -> bytes:
    """Everything received before the connection is reset; fails on a clean EOF."""
    received = bytearray()
    cause: BaseException | None = None
    try:
        with trio.fail_after(limit):
            while chunk := await stream.receive_some(16384):
                received += chunk
                await trio.sleep(pause)
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
    else:
        pytest.fail(f"clean EOF after {len(received)} bytes instead of a reset")
    assert isinstance(cause, ConnectionResetError), cause
    return bytes(received)


async def assert_reset(stream: trio.SocketStream) -> None:
    # Anything readable before the reset would be a byte too many.
    assert await receive_until_reset(stream) == b""


# ---- latency and jitter ----


async def test_latency_outlasts_a_client_read_timeout_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    wall_start = time.perf_counter()
    server = await echo_server_factory(faults=Faults(latency=30))
    client = await connect(server)
    await client.send_all(b"ping")
    sent_at = trio.current_time()
    with trio.move_on_after(5) as read_timeout:
        await client.receive_some()
    assert read_timeout.cancelled_caught
    # The echo is late, not lost: it arrives exactly 30 (virtual) seconds on.
    assert await client.receive_some() == b"ping"
    assert trio.current_time() - sent_at == pytest.approx(30)
    assert server.statistics().faults == {"latency": 1}
    # 30 s of server latency, 5 s of client timeout: far under a second of real time.
    assert time.perf_counter() - wall_start < 1.0


async def echo_delays(server: EchoServer, connect: Connect, count: int) -> list[float]:
    """The virtual time each of *count* sequential echoes took."""
    client = await connect(server)
    delays = []
    for i in range(count):
        message = b"%d" % i
        start = trio.current_time()
        await client.send_all(message)
        assert await receive_exactly(client, len(message)) == message
        delays.append(trio.current_time() - start)
    return delays


async def test_same_seed_same_jitter_sequence(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    faults = Faults(latency=1.0, jitter=0.5, seed=7)
    first = await echo_delays(await echo_server_factory(faults=faults), connect, 20)
    again = await echo_delays(await echo_server_factory(faults=faults), connect, 20)
    other = await echo_delays(
        await echo_server_factory(faults=Faults(latency=1.0, jitter=0.5, seed=8)), connect, 20
    )
    assert again == pytest.approx(first, abs=1e-9)
    assert other != pytest.approx(first, abs=1e-3)
    for delays in (first, other):
        assert all(0.5 <= delay <= 1.5 for delay in delays)
        # Jitter, not a constant: the delays spread over the range.
        assert max(delays) - min(delays) > 0.5


def test_fault_plan_delays_replay_for_a_seed() -> None:
    faults = Faults(latency=0.1, jitter=0.05)
    # Each plan is fresh: the same seed replays its sequence from the start.
    plans = [FaultPlan(faults, seed=s) for s in (1, 1, 2)]
    sequences = [[plan.delay() for _ in range(100)] for plan in plans]
    assert sequences[0] == sequences[1] != sequences[2]
    assert all(0.05 <= d <= 0.15 for d in sequences[0] + sequences[2])
    assert FaultPlan(Faults(latency=0.1), seed=None).delay() == 0.1


async def test_latency_keeps_concurrent_echoes_byte_exact(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    # Connections share one receive buffer: an echo waiting out its latency
    # must not be overwritten by another connection's next read.
    server = await echo_server_factory(faults=Faults(latency=0.010, jitter=0.005, seed=3))
    rng = random.Random(5)
    payloads = [rng.randbytes(50_000) for _ in range(4)]

    async def client(payload: bytes) -> None:
        stream = await connect(server)
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for start in range(0, len(payload), 997):
                    await stream.send_all(payload[start : start + 997])

            nursery.start_soon(send)
            assert await receive_exactly(stream, len(payload), limit=600) == payload

    async with trio.open_nursery() as nursery:
        for payload in payloads:
            nursery.start_soon(client, payload)


# ---- fragment ----


async def test_fragment_one_writes_one_byte_per_send_seen_as_many_receives(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(fragment=1, fragment_delay=0.001))
    client = await connect(server)  # trio sets TCP_NODELAY on both ends
    message = bytes(range(200))
    await client.send_all(message)
    chunks = await receive_chunks(client, len(message))
    assert b"".join(chunks) == message
    assert [len(chunk) for chunk in chunks] == [1] * len(message)
    assert server.statistics().faults == {"fragment": len(message)}


class RecordingStream(trio.abc.HalfCloseableStream):
    """Feeds the server *incoming*, then EOF; records each ``send_all`` call."""

    def __init__(self, incoming: list[bytes]) -> None:
        self.incoming = list(incoming)
        self.sends: list[bytes] = []
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sends.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.incoming.pop(0) if self.incoming else b""

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def faulty_stream_connection(
    stream: trio.abc.Stream, events: Counter[str] | None = None, **faults: Any
) -> Connection:
    return build_connection(stream, ConnectionConfig(faults=Faults(**faults)), fault_events=events)


@pytest.mark.parametrize(
    ("fragment", "pieces"),
    [
        (1, [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"]),
        (3, [b"abc", b"def", b"ghi", b"j"]),
        (10, [b"abcdefghij"]),
        (100, [b"abcdefghij"]),
    ],
)
async def test_fragment_sends_each_piece_separately(fragment: int, pieces: list[bytes]) -> None:
    stream = RecordingStream([b"abcdefghij"])
    conn = faulty_stream_connection(stream, fragment=fragment)
    assert await conn.serve() == "eof"
    assert stream.sends == pieces
    assert conn.bytes_out == 10
    assert isinstance(conn.transport, FaultTransport)
    assert conn.transport.events == {"fragment": len(pieces)}


async def test_fragment_delay_spaces_the_pieces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = RecordingStream([b"abcd"])
    times: list[float] = []
    send_all = stream.send_all

    async def timed_send_all(data: bytes | bytearray | memoryview) -> None:
        times.append(trio.current_time())
        await send_all(data)

    stream.send_all = timed_send_all  # type: ignore[method-assign]
    conn = faulty_stream_connection(stream, fragment=1, fragment_delay=0.25)
    await conn.serve()
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([0.25] * 3)


# ---- bandwidth ----


@pytest.mark.parametrize("bandwidth", [256 * 1024, 1_000_000])
async def test_bandwidth_paces_a_mebibyte_to_the_rate(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    bandwidth: int,
) -> None:
    server = await echo_server_factory(faults=Faults(bandwidth=bandwidth))
    client = await connect(server)
    payload = random.Random(2).randbytes(1 << 20)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        echoed = await receive_exactly(client, len(payload), limit=600)
    elapsed = trio.current_time() - start
    assert echoed == payload
    expected = len(payload) / bandwidth
    assert expected * 0.9 <= elapsed <= expected * 1.1, (elapsed, expected)
    assert server.statistics().faults["bandwidth"] > 0


async def test_bandwidth_grants_no_burst_after_an_idle_spell(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(bandwidth=1000))
    client = await connect(server)
    for _ in range(2):
        start = trio.current_time()
        await client.send_all(b"x" * 2000)
        await receive_exactly(client, 2000, limit=60)
        # 2000 bytes at 1000 B/s: the last 10 ms slice leaves at 1.99 s.
        assert trio.current_time() - start == pytest.approx(1.99)
        await trio.sleep(30)


# ---- stall_after ----


@pytest.mark.parametrize("stall_after", [0, 1000, 3000])
async def test_stall_after_echoes_exactly_that_many_bytes_then_nothing(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    stall_after: int,
) -> None:
    server = await echo_server_factory(faults=Faults(stall_after=stall_after), idle_timeout=100)
    client = await connect(server)
    first = bytes(range(250)) * 12  # 3000 bytes, one message
    await client.send_all(first)
    if stall_after:
        assert await receive_exactly(client, stall_after) == first[:stall_after]
    await assert_nothing_arrives(client, 30)
    # The server stopped reading too: what the client sends now stays unread.
    bytes_in = server.statistics().bytes_in
    assert bytes_in == (len(first) if stall_after else 0)
    await client.send_all(b"more")
    await assert_nothing_arrives(client, 30)
    stats = server.statistics()
    whole = stall_after == len(first)  # the message was echoed in full: one round
    assert (stats.bytes_in, stats.bytes_out, stats.rounds) == (bytes_in, stall_after, whole)
    assert stats.active == 1
    # The idle timeout ends the stall with a clean close, not a reset.
    with trio.fail_after(100):
        assert await client.receive_some() == b""
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    stats = server.statistics()
    assert stats.closed_by_reason == {"stalled": 1}
    assert stats.faults == {"stall": 1}


@pytest.mark.parametrize(
    ("stall_after", "echoed", "rounds"),
    [(2, b"ab", 0), (3, b"ab\n", 1), (4, b"ab\nc", 1), (6, b"ab\ncd\n", 2)],
)
async def test_stall_counts_bytes_across_messages_and_only_whole_rounds(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    stall_after: int,
    echoed: bytes,
    rounds: int,
) -> None:
    server = await echo_server_factory(
        faults=Faults(stall_after=stall_after), framing="line", idle_timeout=10
    )
    client = await connect(server)
    for line in (b"ab\n", b"cd\n", b"ef\n"):
        await client.send_all(line)
        await trio.sleep(1)  # one message per receive
    assert await receive_exactly(client, len(echoed)) == echoed
    await assert_nothing_arrives(client, 5)
    stats = server.statistics()
    assert (stats.rounds, stats.bytes_out) == (rounds, len(echoed))


async def test_latency_longer_than_the_idle_timeout_is_not_idleness(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(latency=30), idle_timeout=10)
    client = await connect(server)
    await client.send_all(b"slow")
    assert await receive_exactly(client, 4, limit=60) == b"slow"
    # The idle timeout counts from the end of the delay.
    start = trio.current_time()
    assert await client.receive_some() == b""
    assert 10 <= trio.current_time() - start <= 10.5
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"idle": 1}


async def test_shutdown_ends_a_stall_at_once_even_without_idle_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    config = make_config(faults=Faults(stall_after=2), idle_timeout=None, grace=1000)
    server: EchoServer = await nursery.start(serve, config)
    client = await connect(server)
    await client.send_all(b"hello")
    assert await receive_exactly(client, 2) == b"he"
    await assert_nothing_arrives(client, 10_000)  # no idle timeout: held forever
    start = trio.current_time()
    server.request_shutdown()
    assert await client.receive_some() == b""
    await client.aclose()
    await server.wait_stopped()
    assert trio.current_time() - start < 1
    assert server.statistics().closed_by_reason == {"stalled": 1}


# ---- reset_after ----


@pytest.mark.parametrize("reset_after", [0, 1000, 3000])
async def test_reset_after_echoes_exactly_that_many_bytes_then_resets(
    echo_server_factory: EchoServerFactory, connect: Connect, reset_after: int
) -> None:
    server = await echo_server_factory(faults=Faults(reset_after=reset_after))
    client = await connect(server)
    first = bytes(range(250)) * 12
    cause: BaseException | None = None
    try:
        await client.send_all(first)
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
    if cause is None:
        assert await receive_exactly(client, reset_after) == first[:reset_after]
        await assert_reset(client)
    else:
        # With a count of 0 the server resets as soon as it accepts, and the
        # kernel reports a reset once: here, to the send that came after it.
        assert reset_after == 0
        assert isinstance(cause, ConnectionResetError)
    await wait_until(lambda: server.statistics().closed == 1)
    stats = server.statistics()
    assert stats.closed_by_reason == {"reset-injected": 1}
    assert stats.faults == {"reset": 1}
    assert stats.bytes_out == reset_after


async def test_reset_mid_stream_loses_no_byte_before_the_count(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    # The client reads slowly, so when the count is reached most of the echo
    # still sits in the server's send buffer: it must reach the client before the reset.
    reset_after = (1 << 20) - 7
    server = await echo_server_factory(faults=Faults(reset_after=reset_after))
    client = await connect(server)
    # The kernel reports a reset once, to the next send or receive: sending no
    # more than the server reads before the count keeps it for the receive.
    payload = random.Random(9).randbytes(1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        received = await receive_until_reset(client, pause=0.0005)
    assert len(received) == reset_after
    assert received == payload[:reset_after]


async def test_stall_and_reset_first_count_wins(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    server = await echo_server_factory(faults=Faults(stall_after=10, reset_after=5))
    client = await connect(server)
    await client.send_all(b"0123456789abcdef")
    assert await receive_exactly(client, 5) == b"01234"
    await assert_reset(client)


async def test_reset_through_a_socket_stream(autojump_clock: trio.testing.MockClock) -> None:
    # A stream transport (TLS or any wrapped stream) finds the socket to reset.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            server_stream = await listeners[0].accept()
            events: Counter[str] = Counter()
            conn = faulty_stream_connection(server_stream, events, reset_after=3, latency=0.5)
            await client.send_all(b"abcdef")
            assert await conn.serve() == "reset-injected"
            assert await receive_exactly(client, 3) == b"abc"
            await assert_reset(client)
    assert events == {"latency": 1, "reset": 1}


async def test_reset_over_a_memory_stream_just_closes() -> None:
    stream = RecordingStream([b"abcdef"])
    conn = faulty_stream_connection(stream, reset_after=4)
    assert await conn.serve() == "reset-injected"
    assert stream.sends == [b"abcd"]
    assert stream.closed


# ---- visible in the logs ----


async def test_close_line_and_json_event_show_the_faults(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = await echo_server_factory(faults=Faults(latency=1, jitter=0.5, fragment=2))
    client = await connect(server)
    await client.send_all(b"abcd")
    assert await receive_exactly(client, 4) == b"abcd"
    await client.send_eof()
    await wait_until(lambda: server.statistics().closed == 1)
    (start,) = [r for r in caplog.records if getattr(r, "event", None) == "faults"]
    # No seed given: the server drew one, and says which.
    assert re.fullmatch(r"faults on: latency=1 jitter=0.5 fragment=2 seed=\d+", start.getMessage())
    (close,) = [r for r in caplog.records if getattr(r, "event", None) == "close"]
    assert close.getMessage().endswith("reason=eof faults=fragment:2,latency:1")
    assert close.fields["faults"] == "fragment:2,latency:1"  # type: ignore[attr-defined]
    assert server.statistics().faults == {"fragment": 2, "latency": 1}


# ---- over TLS: faults act on the plaintext echo ----


async def test_tls_fragment_sends_each_piece_as_its_own_record(
    autojump_clock: trio.testing.MockClock,
    certificates: Certificates,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(
        tls=certificates.tls(), faults=Faults(fragment=3, fragment_delay=0.01)
    )
    async with await open_tls(server, certificates.client_context()) as client:
        await client.send_all(b"abcdefgh")
        assert await receive_chunks(client, 8) == [b"abc", b"def", b"gh"]


async def test_tls_reset_after_the_count(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls(), faults=Faults(reset_after=4))
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"abcdefgh")
    assert await receive_exactly(client, 4) == b"abcd"
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    await trio.aclose_forcefully(client)
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"reset-injected": 1}


async def test_tls_stall_from_the_start_follows_the_handshake(
    autojump_clock: trio.testing.MockClock,
    certificates: Certificates,
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(
        tls=certificates.tls(), faults=Faults(stall_after=0), idle_timeout=20
    )
    async with await open_tls(server, certificates.client_context()) as client:
        await client.send_all(b"hello")
        await assert_nothing_arrives(client, 15)
        # The idle timeout ends the stall with close_notify: a clean EOF.
        assert await receive_until_eof(client, limit=60) == b""
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"stalled": 1}


# ---- the README's example, through the pytest plugin's factory ----


def readme_example() -> str:
    """The Python block of the README section on misbehaving servers."""
    text = README.read_text()
    section = text.split("## Testing your client against a misbehaving server", 1)[1]
    match = re.search(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert match is not None
    return match.group(1)


def test_readme_example_runs_against_the_factory(pytester: pytest.Pytester) -> None:
    example = readme_example()
    assert "echo_server_factory(latency=30)" in example
    pytester.makepyfile(test_my_client_faults=example)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=5)


async def test_factory_keywords_reach_the_faults(
    echo_server_factory: EchoServerFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = await echo_server_factory(latency=2, jitter=1, seed=7, reset_after=3)
    assert server.config.connection.faults == Faults(latency=2, jitter=1, seed=7, reset_after=3)
    client = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with client:
        await client.send_all(b"hello")
        assert await receive_exactly(client, 3) == b"hel"
        await assert_reset(client)


# ---- all off ----


async def test_no_fault_layer_when_every_fault_is_off(
    echo_server_factory: EchoServerFactory, connect: Connect
) -> None:
    server = await echo_server_factory(faults=Faults(seed=7))
    client = await connect(server)
    await client.send_all(b"x")
    await receive_exactly(client, 1)
    (conn,) = server._active
    assert not isinstance(conn.transport, FaultTransport)
    assert server.statistics().faults == {}


@pytest.mark.parametrize(
    "faults",
    [
        Faults(latency=0.1),
        Faults(fragment=1),
        Faults(bandwidth=1),
        Faults(stall_after=0),
        Faults(reset_after=0),
    ],
)
def test_each_fault_enables_the_layer(faults: Faults) -> None:
    assert faults.enabled


def test_pacing_slice_is_a_hundredth_of_a_second() -> None:
    assert FaultPlan(Faults(bandwidth=1_000_000), seed=None).piece_size == 10_000
    assert FaultPlan(Faults(bandwidth=10), seed=None).piece_size == 1
    assert FaultPlan(Faults(bandwidth=1_000_000, fragment=7), seed=None).piece_size == 7
