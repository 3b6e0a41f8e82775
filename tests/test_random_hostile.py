"""Hypothesis mixes well-behaved and hostile clients against one live server.

The server runs in its own thread (its own ``trio.run``) for the whole test, so
every example meets the server that the previous examples left behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_echo import EchoServer, ServerStatistics, serve

from .conftest import make_config, receive_until_eof, reset_on_close

MAX_MESSAGE = 4096
# Reasons the clients below may cause; "error", "idle" or "cancelled" would be a bug.
EXPECTED_REASONS = {"eof", "reset", "line-too-long"}


class ThreadedServer:
    """An echo server running in a thread of its own until :meth:`stop`."""

    def __init__(self, **overrides: Any) -> None:
        self._config = make_config(**overrides)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the server thread did not start")

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self.server: EchoServer = await nursery.start(serve, self._config)
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()

    @property
    def port(self) -> int:
        return self.server.port

    def statistics(self) -> ServerStatistics:
        # Read in the server's own thread: a consistent snapshot.
        return trio.from_thread.run_sync(self.server.statistics, trio_token=self.token)

    def stop(self) -> None:
        trio.from_thread.run(self.server.shutdown, trio_token=self.token)
        self._thread.join(10)


@pytest.fixture
def live_server() -> Iterator[ThreadedServer]:
    server = ThreadedServer(framing="line", max_message=MAX_MESSAGE, idle_timeout=10)
    yield server
    server.stop()


# ---- the clients ----


async def open_client(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


@attrs.frozen
class WellBehaved:
    """Sends lines (and maybe a partial last line) in chunks while reading, then
    half-closes: must get back exactly what it sent."""

    payload: bytes
    chunk: int

    async def run(self, port: int) -> None:
        stream = await open_client(port)
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                for start in range(0, len(self.payload), self.chunk):
                    await stream.send_all(self.payload[start : start + self.chunk])
                await stream.send_eof()

            nursery.start_soon(send)
            echoed = await receive_until_eof(stream, limit=30)
        assert echoed == self.payload


@attrs.frozen
class Resetter:
    """Sends, maybe reads a little, waits, then resets."""

    payload: bytes
    read: bool
    delay: float

    async def run(self, port: int) -> None:
        stream = await open_client(port)
        with trio.move_on_after(0.3):
            await stream.send_all(self.payload)
            if self.read:
                await stream.receive_some()
        await trio.sleep(self.delay)
        reset_on_close(stream.socket)
        stream.socket.close()


@attrs.frozen
class HalfCloser:
    """Sends, half-closes, and leaves without reading the echo."""

    payload: bytes

    async def run(self, port: int) -> None:
        stream = await open_client(port)
        with trio.move_on_after(0.3):
            await stream.send_all(self.payload)
            await stream.send_eof()
        await trio.aclose_forcefully(stream)


@attrs.frozen
class Staller:
    """Sends a little, stalls, then closes without reading."""

    payload: bytes
    delay: float

    async def run(self, port: int) -> None:
        stream = await open_client(port)
        await stream.send_all(self.payload)
        await trio.sleep(self.delay)
        await trio.aclose_forcefully(stream)


@attrs.frozen
class Flooder:
    """Sends up to *size* bytes without ever reading, then closes."""

    size: int

    async def run(self, port: int) -> None:
        stream = await open_client(port)
        with trio.move_on_after(0.3):
            await stream.send_all(b"f" * self.size)
        await trio.aclose_forcefully(stream)


@attrs.frozen
class LongLiner:
    """Sends a line longer than max_message: gets a clean EOF and nothing else."""

    size: int

    async def run(self, port: int) -> None:
        stream = await open_client(port)
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                await stream.send_all(b"L" * self.size)
                await stream.send_eof()

            nursery.start_soon(send)
            assert await receive_until_eof(stream, limit=30) == b""


Client = WellBehaved | Resetter | HalfCloser | Staller | Flooder | LongLiner

no_newline = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b""))
lines = st.lists(no_newline.map(lambda b: b + b"\n"), max_size=30).map(b"".join)
well_behaved = st.builds(
    WellBehaved,
    payload=st.builds(
        lambda body, n, tail: body * n + tail, lines, st.integers(1, 50), no_newline
    ),
    chunk=st.integers(1, 70_000),
)
delays = st.floats(0, 0.2)
sizes = st.integers(1, 1 << 20)
hostile = st.one_of(
    st.builds(
        Resetter, payload=st.binary(min_size=1, max_size=100_000), read=st.booleans(), delay=delays
    ),
    st.builds(HalfCloser, payload=st.binary(min_size=1, max_size=100_000)),
    st.builds(Staller, payload=st.binary(max_size=1000), delay=delays),
    st.builds(Flooder, size=sizes),
    st.builds(LongLiner, size=st.integers(MAX_MESSAGE, 200_000)),
)


def _mix(good: Sequence[WellBehaved], bad: Sequence[Client]) -> st.SearchStrategy[list[Client]]:
    return st.permutations([*good, *bad])


scenarios = st.tuples(
    st.lists(well_behaved, min_size=1, max_size=4), st.lists(hostile, max_size=8)
).flatmap(lambda pair: _mix(pair[0], pair[1]))


def assert_adds_up(stats: ServerStatistics) -> None:
    assert stats.accepted == stats.closed + stats.active, stats


async def run_scenario(live: ThreadedServer, clients: list[Client]) -> None:
    async def watch() -> None:
        # The invariant holds at every moment, not only at the end.
        while True:
            assert_adds_up(await trio.to_thread.run_sync(live.statistics))
            await trio.sleep(0.01)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as clients_nursery:
                for client in clients:
                    clients_nursery.start_soon(client.run, live.port)
            nursery.cancel_scope.cancel()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(clients=scenarios)
def test_random_hostile_mix_against_one_live_server(
    live_server: ThreadedServer, caplog: pytest.LogCaptureFixture, clients: list[Client]
) -> None:
    before = live_server.statistics()
    trio.run(run_scenario, live_server, clients)
    # Every connection of this example ends: the hostile ones by their own close.
    deadline = time.monotonic() + 10
    stats = live_server.statistics()
    while stats.active or stats.accepted < before.accepted + len(clients):
        assert time.monotonic() < deadline, stats
        time.sleep(0.01)
        stats = live_server.statistics()
    assert stats.active == 0, stats
    assert stats.accepted == before.accepted + len(clients)
    assert_adds_up(stats)
    assert set(stats.closed_by_reason) <= EXPECTED_REASONS, stats.closed_by_reason
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert record.levelno < logging.WARNING, record.getMessage()
