"""``trio-echo bench --udp`` (``trio_echo._bench.udp``): a flow's bookkeeping without
sockets, then runs in every mode against trio-echo's own UDP server (its faults make
the network misbehave on purpose) and against servers that answer wrongly or not at
all; real clock, small counts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_echo import (
    BenchConfig,
    BenchResult,
    Faults,
    ServerUnreachable,
    UDPConfig,
    bench,
    parse_address,
)
from trio_echo._bench.udp import LATE_MEMORY, Flow
from trio_echo._cli import main
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import StartProcess
from .processes import TRIO_ECHO

UNLIMITED = UDPConfig(source_rate=None, source_bytes=None, global_rate=None, global_bytes=None)

# ---- one flow's bookkeeping (sans-IO) ----


def test_a_datagram_is_its_flow_and_number_then_the_pattern() -> None:
    flow = Flow(3, 20)
    flow.next = 8
    datagram = flow.datagram(7)
    assert datagram == bytes([0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 7]) + b"\xa5" * 8
    assert flow.difference(datagram) is None


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        (lambda d: d[:-1], "flow 3: an echo of 19 bytes; each datagram has 20"),
        # What the socket returns of a datagram too long: size + 1 bytes.
        (lambda d: d + b"\x00", "flow 3: an echo of more than 20 bytes; each datagram has 20"),
        (lambda d: d[:15] + b"\x00" + d[16:], "flow 3: datagram 7: byte 15: expected 0xa5 "),
        # A header naming a datagram never sent: compared with the oldest outstanding.
        (lambda d: d[:11] + b"\x09" + d[12:], "flow 3: datagram 5: byte 11: expected 0x05 "),
        (lambda d: b"\x01" + d[1:], "flow 3: datagram 5: byte 0: expected 0x00 "),
    ],
)
def test_an_echo_that_was_never_sent_is_one_line(
    damage: Callable[[bytes], bytes], line: str
) -> None:
    flow = Flow(3, 20)
    flow.next = 8
    flow.outstanding = {5: 0, 7: 0}
    difference = flow.difference(damage(flow.datagram(7)))
    assert difference is not None
    assert difference.startswith(line)


def test_an_echo_before_anything_was_sent_is_one_line() -> None:
    flow = Flow(0, 12)
    assert flow.difference(flow.datagram(1)) == "flow 0: an echo before any datagram was sent"
    flow.next = 4  # three sent, none outstanding: compared with the last one
    difference = flow.difference(flow.datagram(9))
    assert difference is not None
    assert difference.startswith("flow 0: datagram 3: byte 11: expected 0x03 ")


def test_expiry_remembers_a_bounded_number_of_lost_datagrams() -> None:
    flow = Flow(0, 12)
    flow.outstanding = {number: number for number in range(1, LATE_MEMORY + 11)}
    assert flow.expire(before=6) == [1, 2, 3, 4, 5]
    assert list(flow.outstanding)[:2] == [6, 7]
    lost = flow.expire(before=LATE_MEMORY + 11)
    assert len(lost) == LATE_MEMORY + 5
    assert len(flow.expired) == LATE_MEMORY
    assert next(iter(flow.expired)) == 11  # the oldest are forgotten first
    assert not flow.outstanding


# ---- runs against a UDP echo server ----


def config_for(port: int, **fields: Any) -> BenchConfig:
    settings: dict[str, Any] = {"connections": 2, "pipeline": 4, "count": 200, "timeout": 0.3}
    settings.update(fields)
    return BenchConfig(address=parse_address(f"127.0.0.1:{port}"), udp=True, **settings)


async def run(port: int, **fields: Any) -> BenchResult:
    with trio.fail_after(20):
        return await bench(config_for(port, **fields))


async def test_a_clean_path_loses_nothing(echo_server_factory: EchoServerFactory) -> None:
    server = await echo_server_factory(udp=UNLIMITED, tcp=False)
    result = await run(server.port)
    assert result.ok
    assert result.mode == "closed"
    assert result.round_trips == 200
    assert result.bytes == 200 * 64
    assert result.connects == 2
    assert result.udp is not None
    assert (result.udp.lost, result.udp.duplicates, result.udp.reordered) == (0, 0, 0)
    assert result.udp.sent == result.round_trips
    assert 0 < result.latency.min <= result.latency.max
    udp = server.statistics().udp
    assert udp is not None
    assert udp.echoed == result.udp.sent


async def test_loss_duplicates_and_reordering_are_reported(
    echo_server_factory: EchoServerFactory,
) -> None:
    faults = Faults(loss=20, duplicate=20, reorder=2, seed=3)
    server = await echo_server_factory(udp=UNLIMITED, tcp=False, faults=faults)
    result = await run(server.port, connections=1, pipeline=8, count=150)
    counts = result.udp
    assert counts is not None
    assert result.ok  # loss is measured, not an error
    assert counts.lost > 0
    assert counts.duplicates > 0
    assert counts.reordered > 0
    # Every datagram was echoed in time or lost; late echoes are among the lost.
    assert counts.sent == result.round_trips + counts.lost == 150
    assert counts.late <= counts.lost
    # What the server injected is what the client saw (to within the run's edges).
    injected = server.statistics().faults
    assert abs(injected["loss"] - (counts.lost - counts.late)) <= 8


async def test_open_loop_counts_latency_from_the_due_time(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(udp=UNLIMITED, tcp=False, faults=Faults(latency=0.02))
    result = await run(server.port, rate=500.0, count=40, pipeline=1)
    assert result.mode == "open"
    assert result.round_trips == 40
    # Datagrams do not wait for echoes: 40 at 500/s take about 0.08 s plus one delay.
    assert result.seconds < 0.5
    assert 20_000 <= result.latency.p50 < 200_000


async def test_ping_reports_each_datagram_by_its_number(
    echo_server_factory: EchoServerFactory,
) -> None:
    faults = Faults(loss=40, seed=5)
    server = await echo_server_factory(udp=UNLIMITED, tcp=False, faults=faults)
    seen: list[int] = []
    config = config_for(server.port, connections=1, pipeline=1, interval=0.005, count=20)
    with trio.fail_after(20):
        result = await bench(config, on_round_trip=lambda number, ns: seen.append(number))
    assert result.mode == "ping"
    counts = result.udp
    assert counts is not None
    assert counts.lost > 0
    # Lost datagrams leave gaps in the numbers, as ping's do.
    assert seen == sorted(seen)
    assert len(seen) == result.round_trips == 20 - counts.lost
    assert set(seen) < set(range(1, 21))


async def test_the_warmup_is_echoed_but_not_counted(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(udp=UNLIMITED, tcp=False)
    result = await run(server.port, count=None, warmup=0.1, duration=0.1, connections=1)
    assert result.udp is not None
    assert result.udp.sent == result.round_trips > 0
    udp = server.statistics().udp
    assert udp is not None
    assert udp.echoed > result.round_trips
    assert result.seconds == pytest.approx(0.1, abs=0.05)


Datagrams = Callable[[trio.socket.SocketType], Awaitable[None]]


async def against(server: Datagrams, **fields: Any) -> BenchResult:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server, sock)
            result = await run(sock.getsockname()[1], **fields)
            nursery.cancel_scope.cancel()
    return result


async def test_an_echo_that_differs_stops_the_run_with_one_line() -> None:
    async def reverse(sock: trio.socket.SocketType) -> None:
        while True:
            data, address = await sock.recvfrom(65536)
            await sock.sendto(data[::-1], address)

    result = await against(reverse, connections=1, pipeline=1, count=5)
    assert not result.ok
    assert result.errors == {"mismatch": 1}
    assert result.failure is not None
    assert (
        result.failure
        == "flow 0: datagram 1: byte 0: expected 0x00 ('\\x00'), received 0xa5 ('¥')"
    )
    assert result.round_trips == 0


async def test_a_silent_server_loses_every_datagram() -> None:
    async def silent(sock: trio.socket.SocketType) -> None:
        await trio.sleep_forever()

    result = await against(silent, count=None, duration=0.2, timeout=0.1)
    assert not result.ok
    assert result.round_trips == 0
    assert result.udp is not None
    # Two flows' windows, then a window more each time one is declared lost.
    assert result.udp.lost == result.udp.sent >= 8


async def test_a_closed_port_is_unreachable_in_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServerUnreachable) as caught:
        await run(port)
    assert str(caught.value) == f"cannot reach 127.0.0.1:{port} over UDP: Connection refused"


# ---- the console script ----


def test_console_script_against_trio_echo_udp(echo_process: StartProcess, tmp_path: Path) -> None:
    server = echo_process("--udp-only", "--udp-source-rate", "0", "--udp-global-rate", "0")
    hgrm = tmp_path / "udp.hgrm"
    done = subprocess.run(
        [TRIO_ECHO, "bench", "--udp", f"127.0.0.1:{server.port}", "--count", "300",
         "--connections", "2", "--json", "--hgrm", str(hgrm)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # The issue's keys, as for streams, and the datagrams' fate.
    assert result["round_trips"] == 300
    assert result["bytes"] == 300 * 64
    assert result["rate"] > 0
    assert result["latency_us"]["p50"] > 0
    assert result["connect_us"]["max"] > 0
    assert result["errors"] == {}
    assert result["udp"] == {"sent": 300, "lost": 0, "late": 0, "duplicates": 0, "reordered": 0}
    assert "Value     Percentile TotalCount 1/(1-Percentile)" in hgrm.read_text()


def wait_bound_udp(port: int, process: subprocess.Popen[bytes]) -> None:
    """Wait (at most 10 s) until a UDP socket is bound to 127.0.0.1:*port*: a
    datagram sent before would draw "port unreachable", as from a closed port."""
    local = f"0100007F:{port:04X}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as table:
            if any(line.split()[1] == local for line in list(table)[1:]):
                return
        assert process.poll() is None, "the UDP server exited"
        # Bounded polling: nothing announces a UDP bind but the kernel's table.
        time.sleep(0.01)
    pytest.fail(f"nothing bound UDP port {port}")


@pytest.mark.system
def test_console_script_against_ncat_udp_echo() -> None:
    if shutil.which("ncat") is None:
        pytest.skip("ncat is not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # ncat hands each datagram to cat through a pipe: one datagram in flight at a time.
    # It forks a child per peer, which outlives its parent: both go with their group.
    ncat = subprocess.Popen(
        ["ncat", "--udp", "-l", "-k", "127.0.0.1", str(port), "--exec", "/bin/cat"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_bound_udp(port, ncat)
        done = subprocess.run(
            [TRIO_ECHO, "bench", "--udp", f"127.0.0.1:{port}", "--count", "100", "--json",
             "--timeout", "2s"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.killpg(ncat.pid, signal.SIGKILL)  # the group this test made, ncat's own
        ncat.wait()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["round_trips"] == 100
    assert result["udp"]["lost"] == 0


def test_console_script_pings_over_udp(echo_process: StartProcess) -> None:
    server = echo_process("--udp-only")
    done = subprocess.run(
        [TRIO_ECHO, "bench", "--udp", f"127.0.0.1:{server.port}", "--count", "3",
         "--interval", "10ms"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for number, line in enumerate(lines[:3], 1):
        assert re.fullmatch(rf"seq={number} bytes=64 time=\d+\.\d{{3}} ms", line)
    assert "UDP ping, 1 flow, 64-byte datagrams" in lines[3]


def test_no_echo_at_all_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        port = silent.getsockname()[1]
        status = main(["bench", "--udp", f"127.0.0.1:{port}", "--duration", "200ms",
                       "--timeout", "100ms"])  # fmt: skip
    assert status == 1
    captured = capsys.readouterr()
    assert "round trips  0 " in captured.out
    assert re.search(r"datagrams    (\d+) sent, \1 lost \(100.00 %", captured.out)
    assert captured.err == "trio-echo bench: no datagram was echoed\n"


def test_an_unknown_host_is_exit_1_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--udp", "no-such-host.invalid:7", "--count", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trio-echo bench: cannot connect to no-such-host.invalid:7: ")
    assert len(err.splitlines()) == 1
