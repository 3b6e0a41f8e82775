"""``trio-echo bench --udp`` (``trio_echo._bench.udp``): loss, duplicates, reordering, checks.

Runs against trio-echo's own UDP server in this process, with its faults
making the network misbehave on purpose; real clock, small counts.
"""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import trio

from trio_echo import Faults, UDPConfig
from trio_echo._bench.address import TCPAddress
from trio_echo._bench.udp import UDPResult, udp_bench, udp_summary
from trio_echo._cli import main
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import StartProcess
from .processes import TRIO_ECHO

UNLIMITED = UDPConfig(source_rate=None, source_bytes=None, global_rate=None, global_bytes=None)


async def run(port: int, **options: object) -> UDPResult:
    settings: dict[str, object] = {
        "flows": 2,
        "window": 4,
        "size": 64,
        "count": 200,
        "duration": None,
        "timeout": 0.3,
        "stop": trio.Event(),
    }
    settings.update(options)
    with trio.fail_after(20):
        return await udp_bench(TCPAddress("127.0.0.1", port), **settings)  # type: ignore[arg-type]


async def test_a_clean_path_loses_nothing(echo_server_factory: EchoServerFactory) -> None:
    server = await echo_server_factory(udp=UNLIMITED, tcp=False)
    result = await run(server.port)
    assert result.ok
    assert result.echoed >= 200
    assert (result.lost, result.duplicates, result.reordered, result.corrupted) == (0, 0, 0, 0)
    assert result.sent == result.echoed
    assert result.latency.max > 0
    udp = server.statistics().udp
    assert udp is not None
    assert udp.echoed == result.sent


async def test_loss_duplicates_and_reordering_are_reported(
    echo_server_factory: EchoServerFactory,
) -> None:
    faults = Faults(loss=20, duplicate=20, reorder=2, seed=3)
    server = await echo_server_factory(udp=UNLIMITED, tcp=False, faults=faults)
    result = await run(server.port, flows=1, window=8, count=150)
    assert result.ok
    assert result.lost > 0
    assert result.duplicates > 0
    assert result.reordered > 0
    # Every datagram was echoed in time or lost; late echoes are among the lost.
    assert result.sent == result.echoed + result.lost
    assert result.late <= result.lost
    # What the server injected is what the client saw (to within the run's edges).
    injected = server.statistics().faults
    assert abs(injected["loss"] - (result.lost - result.late)) <= 8
    text = udp_summary(result)
    assert "loss" in text
    assert f"duplicates {result.duplicates:,}" in text


async def test_an_echo_that_differs_is_corrupted() -> None:
    async def reverse(sock: trio.socket.SocketType) -> None:
        while True:
            data, address = await sock.recvfrom(65536)
            await sock.sendto(data[::-1], address)

    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reverse, sock)
            result = await run(sock.getsockname()[1], flows=1, window=1, count=5, duration=0.5)
            nursery.cancel_scope.cancel()
    assert not result.ok
    assert result.corrupted > 0
    assert result.echoed == 0


def test_console_script_against_trio_echo_udp(echo_process: StartProcess) -> None:
    server = echo_process("--udp-only", "--udp-source-rate", "0", "--udp-global-rate", "0")
    done = subprocess.run(
        [TRIO_ECHO, "bench", "--udp", f"127.0.0.1:{server.port}", "--count", "300", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["mode"] == "udp"
    assert result["echoed"] >= 300
    assert (result["lost"], result["duplicates"], result["corrupted"]) == (0, 0, 0)


def test_no_echo_at_all_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        port = silent.getsockname()[1]
        status = main(["bench", "--udp", f"127.0.0.1:{port}", "--duration", "200ms",
                       "--timeout", "100ms"])  # fmt: skip
    assert status == 1
    captured = capsys.readouterr()
    assert "echoes       0 " in captured.out
    assert captured.err == "trio-echo bench: no datagram was echoed\n"


def test_an_unknown_host_is_exit_1_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--udp", "no-such-host.invalid:7", "--count", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trio-echo bench: no-such-host.invalid:7: ")
    assert len(err.splitlines()) == 1
