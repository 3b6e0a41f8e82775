"""Round trips per second with ``--workers 1`` and ``--workers 2`` under the same load.

Usage (from a checkout with trio-echo installed; loopback only, bounded)::

    python benchmarks/workers.py [--trials 5] [--duration 3] [--clients 2] [--connections 16]

Each trial starts ``trio-echo`` with 1 or 2 workers (alternating, so machine
noise hits both alike), then runs the same load: ``--clients`` client
processes, each holding ``--connections`` connections and sending a
``--size``-byte message on every connection, then reading every echo, for
``--duration`` seconds.  It prints each trial and the medians side by side.
The client processes share the machine's cores with the server, so on a
small machine the second worker competes with the load it serves.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

TRIO_ECHO = str(Path(sys.executable).with_name("trio-echo"))
# A hard bound per client, whatever the duration: no loop runs unbounded.
MAX_ROUNDS_PER_CLIENT = 50_000_000


def client(port: int, connections: int, size: int, duration: float, start_at: float) -> int:
    """Lock-step ping-pong on *connections* sockets until *duration* has passed."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    for sock in socks:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * size
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.monotonic() + duration
    rounds = 0
    while time.monotonic() < deadline and rounds < MAX_ROUNDS_PER_CLIENT:
        for sock in socks:
            sock.sendall(message)
        for sock in socks:
            got = 0
            while got < size:
                chunk = sock.recv(size - got)
                if not chunk:
                    raise ConnectionError("the server closed a connection")
                got += len(chunk)
        rounds += connections
    for sock in socks:
        sock.close()
    return rounds


def start_server(workers: int) -> tuple[subprocess.Popen[str], int]:
    """Start trio-echo with *workers* workers; return it and its port once all listen."""
    proc = subprocess.Popen(
        [TRIO_ECHO, "--port", "0", "--workers", str(workers), "--max-connections", "10000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    listening = 0
    port = 0
    lines: list[str] = []
    deadline = time.monotonic() + 20
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        while listening < workers:
            if time.monotonic() > deadline or not selector.select(deadline - time.monotonic()):
                proc.kill()
                raise RuntimeError(f"trio-echo did not start: {''.join(lines)}")
            line = proc.stderr.readline()
            lines.append(line)
            if match := re.search(r"listening on \S+:(\d+)", line):
                listening += 1
                port = int(match.group(1))
    return proc, port


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def trial(workers: int, args: argparse.Namespace, pool: multiprocessing.pool.Pool) -> float:
    proc, port = start_server(workers)
    try:
        start_at = time.time() + 1.0  # every client connected before the clock starts
        jobs = [
            pool.apply_async(client, (port, args.connections, args.size, args.duration, start_at))
            for _ in range(args.clients)
        ]
        rounds: int = sum(job.get(timeout=args.duration + 60) for job in jobs)
    finally:
        stop_server(proc)
    return float(rounds / args.duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="per worker count")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per trial")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=16, help="per client process")
    parser.add_argument("--size", type=int, default=64, help="message bytes")
    args = parser.parse_args()
    results: dict[int, list[float]] = {1: [], 2: []}
    print(
        f"load: {args.clients} client processes x {args.connections} connections, "
        f"{args.size}-byte messages, {args.duration} s per trial, {args.trials} trials each"
    )
    print(f"{'trial':>5}  {'1 worker rt/s':>14}  {'2 workers rt/s':>15}")
    with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
        for number in range(1, args.trials + 1):
            # Alternate which count goes first, so drift hits both alike.
            order = (1, 2) if number % 2 else (2, 1)
            for workers in order:
                results[workers].append(trial(workers, args, pool))
            print(f"{number:>5}  {results[1][-1]:>14,.0f}  {results[2][-1]:>15,.0f}", flush=True)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(f"{'median':>6} {one:>14,.0f}  {two:>15,.0f}   (2 workers / 1 worker: {two / one:.2f}x)")


if __name__ == "__main__":
    main()
