"""The load generator in pure Python: the fallback when no C compiler is found.

Same command line, modes, checks and JSON output as ``loadgen.c`` (read its
header comment), on one ``selectors`` loop.  It is several times slower than
the C one, so against a fast server it saturates first -- run.py reports that
(its CPU time close to the window's wall time) rather than hiding it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import selectors
import signal
import socket
import sys
import time
from typing import Any

PATLEN = 65521
MAXSLICE = 65536
DRAIN_LIMIT = 5.0

_rng = random.Random(2463534242)
_base = bytes(_rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(PATLEN))
PATTERN = (_base * 3)[: PATLEN + MAXSLICE]  # any slice of <= MAXSLICE bytes wraps


class LoadError(Exception):
    pass


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """utime + stime of *pid* (all its threads) in seconds; -1 if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_wait(pid: int) -> float:
    """Seconds *pid*'s main thread waited, runnable, for a CPU; -1 if unknown."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return -1.0


def open_conn(port: int, *, blocking: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not blocking:
        sock.setblocking(False)
    return sock


class Window:
    """Samples both processes' CPU time at the edges of the measured window."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.pid: int = args.server_pid
        start = time.monotonic()
        self.t1 = start + args.warmup
        self.t2 = self.t1 + args.duration
        self.phase = 0
        self.edges: list[tuple[float, float, float, float, float]] = []

    def tick(self, now: float) -> int:
        if (self.phase == 0 and now >= self.t1) or (self.phase == 1 and now >= self.t2):
            self.phase += 1
            self.edges.append(
                (now, self_cpu(), proc_cpu(self.pid), proc_wait(self.pid), proc_wait(os.getpid()))
            )
        if now >= self.t2 + DRAIN_LIMIT:
            raise LoadError(f"echoes still missing {DRAIN_LIMIT:.0f} s after the window")
        return self.phase

    def report(self) -> dict[str, float]:
        if len(self.edges) == 1:
            now = time.monotonic()
            self.edges.append((now, self_cpu(), proc_cpu(self.pid), -1.0, proc_wait(os.getpid())))
        (w1, c1, s1, q1, m1), (w2, c2, s2, q2, m2) = self.edges
        return {
            "measure_s": w2 - w1,
            "client_cpu_s": c2 - c1,
            "server_cpu_s": s2 - s1 if s1 >= 0 and s2 >= 0 else -1.0,
            "server_wait_s": q2 - q1 if q1 >= 0 and q2 >= 0 else -1.0,
            "client_wait_s": m2 - m1 if m1 >= 0 and m2 >= 0 else -1.0,
        }


def percentile(samples: list[float], q: float) -> int:
    ordered = sorted(samples)
    return int(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6)


def run_pingpong(args: argparse.Namespace) -> dict[str, Any]:
    size: int = args.size
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}  # sock -> [index, round, message, received, t0]

    def start(sock: socket.socket) -> None:
        entry = state[sock]
        off = (entry[0] * 131 + entry[1] * 977) % PATLEN
        msg = PATTERN[off : off + size]
        if args.line:
            msg = msg[:-1] + b"\n"
        entry[2], entry[3], entry[4] = msg, bytearray(), time.monotonic()
        # A message of <= 64 KiB fits an empty loopback send buffer.
        sock.setblocking(True)
        sock.sendall(msg)
        sock.setblocking(False)

    for i in range(args.conns):
        sock = open_conn(args.port, blocking=False)
        state[sock] = [i, 0, b"", bytearray(), 0.0]
        sel.register(sock, selectors.EVENT_READ, sock)
    window = Window(args)
    latencies: list[float] = []
    rounds = total = verified = 0
    for sock in state:
        start(sock)
    while state:
        phase = window.tick(time.monotonic())
        for key, _ in sel.select(0.01):
            sock = key.data
            entry = state[sock]
            try:
                data = sock.recv(size - len(entry[3]))
            except BlockingIOError:
                continue
            if not data:
                raise LoadError("server closed a connection mid-echo")
            entry[3] += data
            if len(entry[3]) < size:
                continue
            if entry[3] != entry[2]:
                raise LoadError("echo mismatch")
            done = time.monotonic()
            verified += size
            total += 1
            if phase == 1:
                rounds += 1
                latencies.append(done - entry[4])
            entry[1] += 1
            if phase == 2 or total >= args.max_rounds:
                sel.unregister(sock)
                sock.close()
                del state[sock]
            else:
                start(sock)
    if window.phase == 0:
        raise LoadError("max-rounds reached before the measured window")
    if not latencies:
        raise LoadError("no round trip completed in the measured window")
    return {
        "mode": "pingpong",
        "conns": args.conns,
        "size": size,
        "line": args.line,
        "round_trips": rounds,
        "verified_bytes": verified,
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
        **window.report(),
    }


def run_stream(args: argparse.Namespace) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    socks = [open_conn(args.port, blocking=False) for _ in range(args.conns)]
    sent = [0] * args.conns
    rcvd = [0] * args.conns
    for i, sock in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    window = Window(args)
    marks: list[int] = []
    while True:
        phase = window.tick(time.monotonic())
        if len(marks) < phase:
            marks.append(sum(rcvd))
        if phase == 2 and sent == rcvd:
            break
        for key, events in sel.select(0.01):
            i = key.data
            sock = socks[i]
            seed = i * 7919
            if events & selectors.EVENT_READ:
                data = sock.recv(MAXSLICE)
                if not data:
                    raise LoadError("server closed a connection mid-stream")
                off = (rcvd[i] + seed) % PATLEN
                if data != PATTERN[off : off + len(data)] or rcvd[i] + len(data) > sent[i]:
                    raise LoadError(f"echo mismatch at byte {rcvd[i]}")
                rcvd[i] += len(data)
            room = args.window - (sent[i] - rcvd[i])
            if phase < 2 and room > 0 and events & selectors.EVENT_WRITE:
                off = (sent[i] + seed) % PATLEN
                with contextlib.suppress(BlockingIOError):
                    sent[i] += sock.send(PATTERN[off : off + min(room, args.chunk)])
            room = args.window - (sent[i] - rcvd[i])
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if phase < 2 and room else 0)
            if want != key.events:
                sel.modify(sock, want, i)
    for sock in socks:
        sock.close()
    return {
        "mode": "stream",
        "conns": args.conns,
        "chunk": args.chunk,
        "window": args.window,
        "bytes": marks[1] - marks[0],
        "verified_bytes": sum(rcvd),
        **window.report(),
    }


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.duration
    socks: list[socket.socket] = []
    for base in range(0, args.conns, 200):
        batch = []
        for _ in range(min(200, args.conns - base)):
            if time.monotonic() > deadline:
                raise LoadError(f"could not open {args.conns} connections in time")
            sock = open_conn(args.port, blocking=True)
            sock.sendall(b"x")
            batch.append(sock)
        for sock in batch:
            if sock.recv(1) != b"x":
                raise LoadError("no echo on an idle connection")
        socks += batch
    print(json.dumps({"held": len(socks)}), flush=True)
    signal.alarm(int(args.duration) + 60)  # the parent must release us in time
    sys.stdin.read()
    for sock in socks:
        sock.close()
    return {"mode": "idle", "conns": len(socks), "verified_bytes": len(socks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("pingpong", "stream", "idle"), default="pingpong")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--window", type=int, default=262144)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--max-rounds", type=int, default=10**9)
    parser.add_argument("--line", action="store_true")
    args = parser.parse_args()
    if args.mode != "idle":
        signal.alarm(int(args.warmup + args.duration + DRAIN_LIMIT + 30))
    runners = {"pingpong": run_pingpong, "stream": run_stream, "idle": run_idle}
    try:
        result = runners[args.mode](args)
    except (LoadError, OSError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        sys.exit(1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
