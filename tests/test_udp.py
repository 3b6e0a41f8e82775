"""UDP echo (``trio_echo._udp``) over real loopback sockets: echoes, drops, limits, faults.

Clients are trio UDP sockets, bound to chosen addresses of 127.0.0.0/8 where
the test needs many sources, and to port 19 (as root) for the blocked-port
case.  Faults run under ``autojump_clock``, so their timing is exact.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import Counter
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from trio_echo import ConnectionConfig, EchoServer, Faults, ServerConfig, UDPConfig
from trio_echo._udp import UDPEcho, bind_udp
from trio_echo._udp_faults import DatagramFaultPlan
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import StartProcess, wait_until
from .processes import echo_once

UNLIMITED = UDPConfig(source_rate=None, source_bytes=None, global_rate=None, global_bytes=None)


async def client(host: str = "127.0.0.1", port: int = 0) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    await sock.bind((host, port))
    return sock


async def reply(sock: trio.socket.SocketType, wait: float = 2.0) -> bytes | None:
    """The next datagram *sock* receives, ``None`` if none comes within *wait* seconds."""
    with trio.move_on_after(wait):
        data, _ = await sock.recvfrom(70000)
        return data
    return None


async def udp_server(factory: EchoServerFactory, **overrides: Any) -> EchoServer:
    overrides.setdefault("udp", UDPConfig())
    return await factory(**overrides)


@pytest.mark.parametrize("size", [0, 1, 1000, 8192])
async def test_each_datagram_is_echoed_once_unchanged(
    echo_server_factory: EchoServerFactory, size: int
) -> None:
    server = await udp_server(echo_server_factory)
    assert server.udp_addresses == server.addresses
    sock = await client()
    with sock:
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        await sock.sendto(payload, server.udp_addresses[0])
        assert await reply(sock) == payload
        assert await reply(sock, 0.2) is None  # once, not twice
    udp = server.statistics().udp
    assert udp is not None
    assert (udp.received, udp.echoed, udp.bytes_in, udp.bytes_out) == (1, 1, size, size)


async def test_tcp_and_udp_share_the_port(echo_server_factory: EchoServerFactory) -> None:
    server = await udp_server(echo_server_factory, rounds=1)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"tcp")
        assert await stream.receive_some() == b"tcp"
    with await client() as sock:
        await sock.sendto(b"udp", ("127.0.0.1", server.port))
        assert await reply(sock) == b"udp"


async def test_udp_only_serves_no_tcp(echo_server_factory: EchoServerFactory) -> None:
    server = await udp_server(echo_server_factory, tcp=False)
    assert server.addresses == ()
    assert server.port == server.udp_addresses[0][1]
    with await client() as sock:
        await sock.sendto(b"x", server.udp_addresses[0])
        assert await reply(sock) == b"x"
    with pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", server.port)


async def test_ipv6_loopback(echo_server_factory: EchoServerFactory) -> None:
    if not socket.has_ipv6:  # pragma: no cover - depends on the machine
        pytest.skip("no IPv6")
    server = await udp_server(echo_server_factory, host="::1")
    with await client("::1") as sock:
        await sock.sendto(b"six", server.udp_addresses[0][:2])
        assert await reply(sock) == b"six"


async def test_oversize_is_dropped_never_truncated(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await udp_server(echo_server_factory, max_message=100)
    with await client() as sock:
        await sock.sendto(b"x" * 101, server.udp_addresses[0])
        await sock.sendto(b"y" * 60000, server.udp_addresses[0])
        await sock.sendto(b"z" * 100, server.udp_addresses[0])
        # The first answer is the datagram that fits: the others got none.
        assert await reply(sock) == b"z" * 100
        assert await reply(sock, 0.2) is None
    udp = server.statistics().udp
    assert udp is not None
    assert udp.dropped_by_reason == {"dropped_size": 2}
    assert (udp.received, udp.echoed, udp.dropped) == (3, 1, 2)


async def test_a_source_on_port_19_gets_no_answer(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await udp_server(echo_server_factory)
    try:
        chargen = await client("127.0.0.1", 19)
    except PermissionError:  # pragma: no cover - CI runs as root
        pytest.skip("binding port 19 needs root")
    with chargen, await client() as other:
        await chargen.sendto(b"loop?", server.udp_addresses[0])
        await other.sendto(b"fine", server.udp_addresses[0])
        assert await reply(other) == b"fine"
        assert await reply(chargen, 0.3) is None
    udp = server.statistics().udp
    assert udp is not None
    assert udp.dropped_by_reason == {"dropped_port": 1}


async def test_a_flood_from_one_source_is_rate_limited(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await udp_server(
        echo_server_factory, udp=UDPConfig(source_rate=50, source_bytes=None)
    )
    sent = 2000
    start = trio.current_time()
    with await client() as sock:
        for i in range(sent):
            await sock.sendto(b"%d" % i, server.udp_addresses[0])
        received = 0
        while await reply(sock, 0.2) is not None:
            received += 1
        elapsed = trio.current_time() - start
    udp = server.statistics().udp
    assert udp is not None
    # One second's burst, plus at most what the elapsed time refilled.
    assert received == udp.echoed <= 50 + 50 * elapsed + 1
    assert udp.echoed < sent / 4
    assert udp.dropped_by_reason["dropped_rate_source"] == udp.received - udp.echoed > 0
    assert udp.sources == 1


async def test_many_sources_keep_the_table_bounded(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await udp_server(echo_server_factory, udp=UDPConfig(max_sources=100))
    answered = 0
    for i in range(1500):
        host = f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256 + 0}"
        if host.endswith(".0"):
            continue
        with await client(host) as sock:
            await sock.sendto(host.encode(), server.udp_addresses[0])
            answered += await reply(sock) == host.encode()
        udp = server.statistics().udp
        assert udp is not None
        assert udp.sources <= 100
    udp = server.statistics().udp
    assert udp is not None
    assert answered == udp.echoed == udp.received
    assert udp.sources == 100


async def test_global_limit_caps_many_sources(echo_server_factory: EchoServerFactory) -> None:
    server = await udp_server(echo_server_factory, udp=UDPConfig(global_rate=20))
    socks = [await client(f"127.2.0.{i}") for i in range(1, 61)]
    start = trio.current_time()
    for sock in socks:
        await sock.sendto(b"x", server.udp_addresses[0])
    await wait_until(lambda: server.statistics().udp.received == 60)  # type: ignore[union-attr]
    elapsed = trio.current_time() - start
    for sock in socks:
        sock.close()
    udp = server.statistics().udp
    assert udp is not None
    # The burst of 20, plus at most what the elapsed time refilled.
    assert 20 <= udp.echoed <= 20 + 20 * elapsed + 1
    assert udp.dropped_by_reason["dropped_rate_global"] == 60 - udp.echoed


async def test_each_drop_reason_is_logged_at_most_once_per_interval(
    autojump_clock: MockClock,
    echo_server_factory: EchoServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await udp_server(echo_server_factory, max_message=10)
    with caplog.at_level(logging.WARNING, logger="trio_echo"), await client() as sock:
        for _ in range(5):
            await sock.sendto(b"x" * 11, server.udp_addresses[0])
        await wait_until(lambda: server.statistics().udp.received == 5)  # type: ignore[union-attr]
        await trio.sleep(10)
        await sock.sendto(b"x" * 11, server.udp_addresses[0])
        await wait_until(lambda: server.statistics().udp.received == 6)  # type: ignore[union-attr]
    lines = [r.getMessage() for r in caplog.records if "dropped_size" in r.getMessage()]
    assert len(lines) == 2
    assert "(1 so far" in lines[0]
    assert "(6 so far" in lines[1]


async def answered(server: EchoServer, count: int) -> list[int]:
    """Send datagrams 0..count-1 one at a time; the numbers that came back."""
    out = []
    with await client() as sock:
        for i in range(count):
            await sock.sendto(b"%d" % i, server.udp_addresses[0])
            data = await reply(sock, 1.0)
            if data is not None:
                out.append(int(data))
    return out


async def test_loss_is_reproducible_with_the_seed(
    autojump_clock: MockClock, echo_server_factory: EchoServerFactory
) -> None:
    faults = Faults(loss=30, seed=11)
    first = await answered(await udp_server(echo_server_factory, faults=faults), 100)
    second = await answered(await udp_server(echo_server_factory, faults=faults), 100)
    # The same as the sans-IO plan decides for the same seed.
    plan = DatagramFaultPlan(faults, seed=11, events=Counter())
    expected = [i for i in range(100) if plan.admit(b"%d" % i, None, 0.0)]
    assert first == second == expected
    assert 55 < len(first) < 85


async def test_latency_delays_each_echo(
    autojump_clock: MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await udp_server(echo_server_factory, faults=Faults(latency=0.5))
    with await client() as sock:
        start = trio.current_time()
        await sock.sendto(b"late", server.udp_addresses[0])
        assert await reply(sock) == b"late"
        assert trio.current_time() - start == pytest.approx(0.5)
    assert server.statistics().faults == {"latency": 1}


async def test_duplicate_and_reorder(
    autojump_clock: MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await udp_server(echo_server_factory, faults=Faults(reorder=1, duplicate=100))
    with await client() as sock:
        for i in range(4):
            await sock.sendto(b"%d" % i, server.udp_addresses[0])
        got = []
        while (data := await reply(sock, 2.0)) is not None:
            got.append(data)
    # 0 is held (its copy goes ahead), 1 and its copy pass, then 0; the same for 2 and 3.
    assert got == [b"0", b"1", b"1", b"0", b"2", b"3", b"3", b"2"]
    assert server.statistics().faults == {"duplicate": 4, "reorder": 2}


async def test_a_held_datagram_is_released_at_shutdown(
    autojump_clock: MockClock, echo_server_factory: EchoServerFactory
) -> None:
    server = await udp_server(echo_server_factory, faults=Faults(reorder=3))
    with await client() as sock:
        await sock.sendto(b"held", server.udp_addresses[0])
        await wait_until(lambda: server.statistics().udp.received == 1)  # type: ignore[union-attr]
        await server.shutdown()
        assert await reply(sock, 0.1) == b"held"
        # Stopped: nothing answers any more.
        await sock.sendto(b"more", server.udp_addresses[0])
        assert await reply(sock, 0.5) is None


async def test_statistics_without_udp_have_no_udp_section(echo_server: EchoServer) -> None:
    assert echo_server.statistics().udp is None
    assert echo_server.udp_addresses == ()


def test_bind_udp_on_every_address_shares_one_port() -> None:
    sockets = bind_udp(None, 0, [])
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        assert {sock.family for sock in sockets} <= {socket.AF_INET, socket.AF_INET6}
    finally:
        for sock in sockets:
            sock.close()


async def test_a_udp_port_in_use_fails_before_start_and_closes_tcp(
    echo_server_factory: EchoServerFactory,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        descriptors = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError, match="Address already in use"):
            await udp_server(echo_server_factory, port=port)
        # The TCP listener bound first was closed again: no descriptor is left.
        assert len(os.listdir("/proc/self/fd")) == descriptors


class FlakySocket:
    """A real UDP socket whose first sends fail with the given errors."""

    def __init__(self, sock: socket.socket, *errors: OSError) -> None:
        self._sock = sock
        self._errors = list(errors)

    def fileno(self) -> int:
        return self._sock.fileno()

    def sendto(self, data: bytes, address: Any) -> int:
        if self._errors:
            raise self._errors.pop(0)
        return self._sock.sendto(data, address)


def endpoint(**faults: Any) -> UDPEcho:
    config = ServerConfig(udp=UDPConfig(), connection=ConnectionConfig(faults=Faults(**faults)))
    return UDPEcho(config, [], fault_seed=1, fault_events=Counter())


async def test_a_full_send_buffer_waits_and_a_failed_send_is_counted() -> None:
    udp = endpoint()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ours,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as theirs,
    ):
        ours.bind(("127.0.0.1", 0))
        theirs.bind(("127.0.0.1", 0))
        shared = bytearray(b"echo")
        flaky: Any = FlakySocket(ours, BlockingIOError(), BlockingIOError())
        await udp._send(flaky, memoryview(shared), theirs.getsockname())
        assert theirs.recv(10) == b"echo"
        failing: Any = FlakySocket(ours, PermissionError(1, "Operation not permitted"))
        await udp._send(failing, b"lost", theirs.getsockname())
    stats = udp.statistics()
    assert (stats.echoed, stats.bytes_out) == (1, 4)
    assert stats.dropped_by_reason == {"dropped_send_error": 1}


async def test_delayed_echoes_beyond_the_cap_are_dropped(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("trio_echo._udp.MAX_DELAYED", 3)
    udp = endpoint(latency=1.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        echoes = [(1.0, b"x", (sock, ("127.0.0.1", 9))) for _ in range(5)]
        udp._queue(echoes, 0.0)
    stats = udp.statistics()
    assert stats.delayed == 3
    assert stats.dropped_by_reason == {"dropped_backlog": 2}


def udp_probe(target: tuple[str, int], payload: bytes, tries: int = 40) -> bool:
    """Send *payload* from a fresh source until it is echoed (at most *tries* times)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.25)
        for _ in range(tries):
            probe.sendto(payload, target)
            try:
                if probe.recv(100) == payload:
                    return True
            except TimeoutError:
                continue
    return False


@pytest.mark.system
def test_hostile_udp_against_the_console_script(echo_process: StartProcess) -> None:
    """A flood, many sources, oversize, empty and port-19 datagrams: the server
    keeps serving TCP and UDP, and its memory stays where it was."""
    server = echo_process(
        *("--udp", "--max-message", "1KiB", "--udp-max-sources", "50", "--log-format", "json"),
        # Low enough to be reached whatever share of the flood the kernel delivers.
        *("--udp-source-rate", "100"),
    )
    target = ("127.0.0.1", server.port)
    rss_before = server.rss_kib()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        for i in range(20_000):
            flood.sendto(b"x" * (i % 2000), target)  # half of them oversize
    # The kernel drops what does not fit the server's buffer: probe until answered.
    assert udp_probe(target, b"after the flood")
    for i in range(1, 201):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as source:
            source.bind((f"127.3.{i // 200}.{i % 200 + 1}", 0))
            source.sendto(b"", target)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as chargen:
        chargen.bind(("127.0.0.1", 19))
        chargen.sendto(b"loop", target)
    assert udp_probe(target, b"still here")
    assert echo_once(server.port, b"tcp too") == b"tcp too"
    assert server.rss_kib() - rss_before < 2048
    assert server.stop() == 0
    udp = json.loads(server.wait_for('"event":"shutdown"').string)["udp"]
    assert udp["sources"] <= 50
    assert udp["dropped_by_reason"]["dropped_size"] > 0
    assert udp["dropped_by_reason"]["dropped_port"] == 1
    assert udp["dropped_by_reason"]["dropped_rate_source"] > 0
    assert "Traceback" not in server.log
