"""UDP echo and Unix-socket echo, measured side by side (issue 15's targets).

Usage::

    python benchmarks/udp_unix.py                # the three targets, 3 alternating repeats
    python benchmarks/udp_unix.py --quick        # small counts, one repeat (a smoke run)
    python benchmarks/udp_unix.py --json out.json

1. **CPU per echoed datagram**: ``trio-echo --udp-only`` with its rate limits on
   but set far above the load, against an idiomatic asyncio
   ``DatagramProtocol`` echo server (``transport.sendto(data, addr)`` in
   ``datagram_received``).  The client keeps a window of datagrams in flight
   and sends one more per echo; the server's CPU time (``/proc/PID/stat``)
   over the window divided by the echoes counted.
2. **RSS under a flood**: datagrams from many source addresses on
   127.0.0.0/8, forged with a raw socket (needs root), default rate limits (so
   most are dropped, as under a real flood); the server's RSS once the first
   ``--flood / 10`` have been sent and once all have, each after the server
   has gone quiet.
3. **Unix vs TCP**: one trio-echo serving both; the same ping-pong client
   (1 KiB, one connection) over each; server CPU per round trip.

Server and client are pinned to different cores when there are two; the
variants alternate, and medians are quoted.  Every loop is bounded in count
and in time.  The machine is shared: a figure from a busy machine says so
(``load`` in the output is the 1-minute load average at the start of each run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
LISTENING = re.compile(r"listening on (\S+):(\d+)")
HIGH = "100000000"  # a rate limit far above anything this machine can send
PAYLOAD = 64  # bytes per datagram
CLIENT_TIMEOUT = 60.0  # no measuring loop runs longer than this


# -- processes ----------------------------------------------------------------------


def cores() -> tuple[set[int] | None, set[int] | None]:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, {available[1]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextmanager
def server(command: list[str], core: set[int] | None) -> Iterator[tuple[int, int]]:
    """Start *command*, pinned to *core*; yield (pid, port) once it listens."""
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if core is not None:
            os.sched_setaffinity(proc.pid, core)
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{command} exited before listening")
            if match := LISTENING.search(line) or re.match(r"PORT (\d+)", line):
                port = int(match.groups()[-1])
        if port is None:
            raise RuntimeError(f"{command} did not listen within 30 s")
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def trio_echo_started(*args: str) -> list[str]:
    # At the default log level, for the "listening on" line; little is logged after it.
    return [sys.executable, "-m", "trio_echo", *args]


ASYNCIO_UDP = [sys.executable, str(Path(__file__).resolve()), "--serve-asyncio-udp"]


def serve_asyncio_udp() -> None:
    """The peer: asyncio's documented UDP echo server, unchanged in spirit."""

    class EchoServerProtocol(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # A DatagramTransport in fact (asyncio types it as the base class).
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(data, addr)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            EchoServerProtocol, local_addr=("127.0.0.1", 0)
        )
        print(f"PORT {transport.get_extra_info('sockname')[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- load ---------------------------------------------------------------------------


def udp_window(port: int, count: int, window: int = 32) -> int:
    """Echo *count* datagrams with *window* in flight; return the echoes received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.2)
    payload = bytes(PAYLOAD)
    sent = received = 0
    deadline = time.monotonic() + CLIENT_TIMEOUT
    with sock:
        for _ in range(window):
            sock.send(payload)
            sent += 1
        while received < count and time.monotonic() < deadline:
            try:
                sock.recv(2048)
            except TimeoutError:
                # Lost in a full buffer: prime the window again.
                for _ in range(window):
                    sock.send(payload)
                    sent += 1
                continue
            received += 1
            if sent < count:
                sock.send(payload)
                sent += 1
    return received


def stream_pingpong(connect: Callable[[], socket.socket], rounds: int) -> int:
    payload = bytes(1024)
    deadline = time.monotonic() + CLIENT_TIMEOUT
    done = 0
    with connect() as sock:
        while done < rounds and time.monotonic() < deadline:
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed")
                got += len(chunk)
            done += 1
    return done


def forged_flood(port: int, count: int, sources: int) -> None:
    """Send *count* UDP datagrams to 127.0.0.1:*port* from *sources* addresses
    in 127.64.0.0/10 (round robin), through a raw socket (root only)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with raw:
        payload = b"f" * PAYLOAD
        udp_len = 8 + len(payload)
        packets = []
        for i in range(sources):
            src = socket.inet_aton(f"127.{64 + i // 65536}.{i // 256 % 256}.{i % 256 or 1}")
            ip = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + udp_len,
                0,
                0,
                64,
                socket.IPPROTO_UDP,
                0,
                src,
                socket.inet_aton("127.0.0.1"),
            )
            udp = struct.pack("!HHHH", 40000 + i % 20000, port, udp_len, 0)
            packets.append(ip + udp + payload)
        target = ("127.0.0.1", 0)
        for n in range(count):
            raw.sendto(packets[n % sources], target)


def wait_quiet(pid: int, limit: float = 30.0) -> None:
    """Until the server has used no CPU for 0.3 s (bounded by *limit*)."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now - last < 0.005:
            return
        last = now


# -- the three targets --------------------------------------------------------------


def cpu_per(pid: int, work: Callable[[], int]) -> tuple[float, int]:
    before = cpu_seconds(pid)
    done = work()
    return (cpu_seconds(pid) - before) / max(done, 1) * 1e6, done


def bench_udp_cpu(count: int, server_core: set[int] | None) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    rate_options = (
        "--udp-source-rate",
        HIGH,
        "--udp-source-bytes",
        HIGH,
        "--udp-global-rate",
        HIGH,
        "--udp-global-bytes",
        HIGH,
    )
    variants = {
        "trio-echo": trio_echo_started("--udp-only", "--port", "0", *rate_options),
        "asyncio-datagram-protocol": ASYNCIO_UDP,
    }
    for name, command in variants.items():
        with server(command, server_core) as (pid, port):
            udp_window(port, min(count // 10, 20000))  # warm-up
            us, done = cpu_per(pid, lambda port=port: udp_window(port, count))
            figures[name] = {"cpu_us_per_datagram": round(us, 3), "echoes": done}
    return figures


def bench_flood(count: int, sources: int, server_core: set[int] | None) -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "forging source addresses needs root"}
    with server(trio_echo_started("--udp-only", "--port", "0"), server_core) as (pid, port):
        first = count // 10
        forged_flood(port, first, sources)
        wait_quiet(pid)
        rss_first = rss_kib(pid)
        forged_flood(port, count - first, sources)
        wait_quiet(pid)
        rss_all = rss_kib(pid)
    return {
        "datagrams": count,
        "sources": sources,
        "rss_kib_after_first_tenth": rss_first,
        "rss_kib_after_all": rss_all,
        "growth_percent": round((rss_all - rss_first) / rss_first * 100, 2),
    }


def bench_unix_tcp(rounds: int, server_core: set[int] | None, tmp: Path) -> dict[str, Any]:
    path = str(tmp / f"bench-{os.getpid()}.sock")
    figures: dict[str, Any] = {}
    command = trio_echo_started("--port", "0", "--unix", path)
    with server(command, server_core) as (pid, port):
        clients: dict[str, Callable[[], socket.socket]] = {
            "tcp": lambda: socket.create_connection(("127.0.0.1", port)),
            "unix": lambda: _unix_client(path),
        }
        for name, connect in clients.items():
            stream_pingpong(connect, rounds // 10)  # warm-up
            us, done = cpu_per(pid, lambda c=connect: stream_pingpong(c, rounds))
            figures[name] = {"cpu_us_per_round_trip": round(us, 3), "round_trips": done}
    return figures


def _unix_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def median_of(runs: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in keys:
            value = value[key]
        values.append(value)
    return float(statistics.median(values))


def ratio(a: float, b: float) -> float | None:
    # A short --quick run may use less CPU than one clock tick (10 ms).
    return round(a / b, 3) if b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--flood", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--serve-asyncio-udp", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.serve_asyncio_udp:
        serve_asyncio_udp()
        return 0
    if opts.quick:
        opts.repeat, opts.datagrams, opts.flood, opts.rounds = 1, 5000, 20000, 2000
        opts.sources = min(opts.sources, 1000)
    server_core, client_core = cores()
    if client_core is not None:
        os.sched_setaffinity(0, client_core)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    runs: list[dict[str, Any]] = []
    for repeat in range(opts.repeat):
        run = {
            "load": os.getloadavg()[0],
            "udp_cpu": bench_udp_cpu(opts.datagrams, server_core),
            "unix_tcp": bench_unix_tcp(opts.rounds, server_core, tmp),
        }
        if repeat == 0:
            run["flood"] = bench_flood(opts.flood, opts.sources, server_core)
        runs.append(run)
        print(json.dumps(run), flush=True)
    trio_us = median_of(runs, "udp_cpu", "trio-echo", "cpu_us_per_datagram")
    asyncio_us = median_of(runs, "udp_cpu", "asyncio-datagram-protocol", "cpu_us_per_datagram")
    tcp_us = median_of(runs, "unix_tcp", "tcp", "cpu_us_per_round_trip")
    unix_us = median_of(runs, "unix_tcp", "unix", "cpu_us_per_round_trip")
    summary = {
        "repeats": opts.repeat,
        "udp_cpu_us_per_datagram": {"trio-echo": trio_us, "asyncio": asyncio_us},
        "udp_cpu_ratio_vs_asyncio": ratio(trio_us, asyncio_us),
        "stream_cpu_us_per_round_trip": {"tcp": tcp_us, "unix": unix_us},
        "unix_vs_tcp_ratio": ratio(unix_us, tcp_us),
        "flood": runs[0]["flood"],
    }
    print(json.dumps(summary, indent=2))
    if opts.json is not None:
        opts.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
