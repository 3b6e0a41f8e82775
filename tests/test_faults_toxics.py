"""The faults past Toxiproxy's (issue 17) in ``_faults``: slow_close, timeout,
limit_data, read_bandwidth, toxicity and targeting.

Each runs under ``autojump_clock`` over real loopback sockets: seconds of
virtual time, milliseconds of wall time (each test checks it stays under 1 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_echo import EchoServer, Faults
from trio_echo._faults import chosen
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Connect, receive_exactly, wait_until


@pytest.fixture(autouse=True)
def under_a_second_of_wall_time() -> Iterator[None]:
    start = time.perf_counter()
    yield
    assert time.perf_counter() - start < 1.0


async def assert_silent_for(stream: trio.abc.ReceiveStream, seconds: float) -> None:
    with trio.move_on_after(seconds) as scope:
        chunk = await stream.receive_some()
        pytest.fail(f"received {chunk!r} too early")
    assert scope.cancelled_caught


async def closed_by(server: EchoServer, count: int = 1) -> dict[str, int]:
    await wait_until(lambda: server.statistics().closed == count)
    return dict(server.statistics().closed_by_reason)


# ---- slow_close ----


async def test_slow_close_delays_the_eof_after_the_clients_by_exactly_t(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(slow_close=7))
    client = await connect(server)
    await client.send_all(b"bye")
    assert await receive_exactly(client, 3) == b"bye"
    await client.send_eof()
    start = trio.current_time()
    await assert_silent_for(client, 6.9)
    with trio.fail_after(1):
        assert await client.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(7)
    assert await closed_by(server) == {"eof": 1}
    assert server.statistics().faults == {"slow_close": 1}


async def test_slow_close_delays_the_close_after_rounds(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(slow_close=3), rounds=1)
    client = await connect(server)
    await client.send_all(b"one")
    assert await receive_exactly(client, 3) == b"one"
    start = trio.current_time()
    assert await client.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(3)
    assert await closed_by(server) == {"rounds": 1}


# ---- timeout ----


async def test_timeout_answers_nothing_then_closes_after_t(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(timeout=20))
    client = await connect(server)
    start = trio.current_time()
    await client.send_all(b"anyone there?")
    await assert_silent_for(client, 19.9)
    # Input is read and dropped: a client that keeps sending is not blocked.
    await client.send_all(b"x" * 1_000_000)
    with trio.fail_after(1):
        assert await client.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(20)
    assert await closed_by(server) == {"timeout-injected": 1}
    assert server.statistics().faults == {"timeout": 1}
    assert server.statistics().bytes_out == 0


async def test_timeout_zero_never_closes(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(timeout=0), idle_timeout=None, grace=1)
    client = await connect(server)
    await client.send_all(b"hello")
    await assert_silent_for(client, 10_000)
    assert server.statistics().active == 1
    # A shutdown still ends it at once, cleanly.
    await server.shutdown()
    assert await client.receive_some() == b""


# ---- limit_data ----


@pytest.mark.parametrize("limit", [0, 1, 1000, 2999])
async def test_limit_data_echoes_exactly_n_bytes_then_a_clean_eof(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    limit: int,
) -> None:
    server = await echo_server_factory(faults=Faults(limit_data=limit))
    client = await connect(server)
    message = bytes(range(250)) * 12
    await client.send_all(message)
    assert await receive_exactly(client, limit) == message[:limit]
    with trio.fail_after(5):
        assert await client.receive_some() == b""
    assert await closed_by(server) == {"limit-data": 1}
    stats = server.statistics()
    assert (stats.bytes_out, stats.faults) == (limit, {"limit_data": 1})


# ---- read_bandwidth ----


async def test_read_bandwidth_paces_reading_and_blocks_the_clients_sends(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    rate = 256 * 1024
    size = 2 * 1024 * 1024  # 8 s at the rate
    server = await echo_server_factory(faults=Faults(read_bandwidth=rate))
    client = await connect(server)
    message = bytes(range(256)) * (size // 256)
    echoed = bytearray()
    send_took = 0.0

    async def send() -> None:
        nonlocal send_took
        start = trio.current_time()
        await client.send_all(message)
        send_took = trio.current_time() - start

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.fail_after(100):
            while len(echoed) < size:
                echoed += await client.receive_some()
    took = trio.current_time() - start
    assert echoed == message
    # The server took the bytes at the rate, never faster...
    assert size / rate - 0.1 <= took <= size / rate + 0.1
    # ...so the client's send blocked (kernel buffers hold only part of 2 MiB).
    assert send_took > 4
    assert server.statistics().faults["read_bandwidth"] > 0


# ---- toxicity and targeting ----


async def delayed(server: EchoServer, connect: Connect, count: int) -> list[bool]:
    """For each of *count* connections opened one after another: was its echo late?"""
    late = []
    for _ in range(count):
        client = await connect(server)
        start = trio.current_time()
        await client.send_all(b"x")
        await receive_exactly(client, 1, limit=100)
        late.append(trio.current_time() - start >= 10)
        await client.aclose()
    return late


async def test_toxicity_picks_a_seeded_share_of_connections(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    faults = Faults(latency=10, toxicity=0.5, seed=3)
    first = await delayed(await echo_server_factory(faults=faults), connect, 20)
    again = await delayed(await echo_server_factory(faults=faults), connect, 20)
    assert first == again
    assert first == [chosen(faults, number=n, seed=3) for n in range(1, 21)]
    assert 0 < sum(first) < 20


@pytest.mark.parametrize("toxicity", [0.0, 1.0])
async def test_toxicity_zero_spares_all_one_hits_all(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    toxicity: float,
) -> None:
    server = await echo_server_factory(faults=Faults(latency=10, toxicity=toxicity))
    assert await delayed(server, connect, 3) == [bool(toxicity)] * 3


async def test_target_connection_hits_only_the_kth(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(faults=Faults(latency=10, target_connection=2))
    assert await delayed(server, connect, 4) == [False, True, False, False]
    assert server.statistics().faults == {"latency": 1}


@pytest.mark.parametrize(
    ("cidrs", "hit"),
    [(("127.0.0.0/8",), True), (("10.0.0.0/8", "::1/128"), False), (("127.0.0.1",), True)],
)
async def test_target_cidr_hits_only_clients_in_the_networks(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
    cidrs: tuple[str, ...],
    hit: bool,
) -> None:
    server = await echo_server_factory(faults=Faults(latency=10, target_cidr=cidrs))
    assert await delayed(server, connect, 2) == [hit, hit]


async def test_target_cidr_uses_the_address_a_proxy_header_names(
    autojump_clock: trio.testing.MockClock,
    echo_server_factory: EchoServerFactory,
    connect: Connect,
) -> None:
    server = await echo_server_factory(
        faults=Faults(latency=10, target_cidr=("192.0.2.0/24",)), proxy_protocol=True
    )
    for source, late in (("192.0.2.7", True), ("198.51.100.1", False)):
        client = await connect(server)
        header = f"PROXY TCP4 {source} 127.0.0.1 5000 9999\r\n".encode()
        start = trio.current_time()
        await client.send_all(header + b"x")
        await receive_exactly(client, 1, limit=100)
        assert (trio.current_time() - start >= 10) is late


def test_chosen_is_a_pure_function_of_seed_and_number() -> None:
    faults = Faults(latency=1, toxicity=0.3)
    draws = [chosen(faults, number=n, seed=42) for n in range(1, 200)]
    assert draws == [chosen(faults, number=n, seed=42) for n in range(1, 200)]
    assert 30 < sum(draws) < 90
    assert draws != [chosen(faults, number=n, seed=43) for n in range(1, 200)]


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("slow_close", -1, ValueError, "slow_close"),
        ("timeout", "5s", TypeError, "timeout"),
        ("limit_data", -1, ValueError, "limit_data"),
        ("read_bandwidth", 0, ValueError, "read_bandwidth"),
        ("toxicity", 1.5, ValueError, "toxicity"),
        ("toxicity", True, TypeError, "toxicity"),
        ("target_cidr", ("300.0.0.0/8",), ValueError, "target_cidr"),
        ("target_cidr", "10.0.0.0/8", TypeError, "target_cidr"),
        ("target_connection", 0, ValueError, "target_connection"),
    ],
)
def test_bad_values_name_the_field(
    field: str, value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Faults(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "faults",
    [Faults(slow_close=1), Faults(timeout=0), Faults(limit_data=5), Faults(read_bandwidth=1)],
)
def test_each_new_fault_enables_the_layer(faults: Faults) -> None:
    assert faults.enabled


def test_targeting_alone_is_not_a_fault() -> None:
    assert not Faults(toxicity=0.5, target_connection=1, target_cidr=("10.0.0.0/8",)).enabled
