"""Memory per idle connection: the server's RSS delta / connections, at 10,000 by default.

Starts ``trio-echo`` as a child process, opens N connections that each make one
round trip and then stay open and idle, and reads the server's VmRSS before and
after.  Every connection then echoes once more (all open at once) and closes.
Prints one line per run and the median over runs.

    python benchmarks/idle_memory.py [--connections 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

# Run as a script: its directory is on sys.path.
from _server import EchoProcess, raise_fd_limit


def round_trip(sock: socket.socket, message: bytes) -> None:
    sock.sendall(message)
    received = b""
    while len(received) < len(message):
        chunk = sock.recv(len(message) - len(received))
        if not chunk:
            raise RuntimeError("EOF before the echo")
        received += chunk
    if received != message:
        raise RuntimeError(f"echo mismatch: {received!r} != {message!r}")


def one_run(n: int) -> float:
    server = EchoProcess("--max-connections", str(n + 1), "--idle-timeout", "0")
    clients: list[socket.socket] = []
    try:
        # Warm up the accept and echo paths so that the baseline includes them.
        with socket.create_connection(("127.0.0.1", server.port)) as warm:
            round_trip(warm, b"warm-up")
        time.sleep(0.5)
        before = server.rss_kib()
        for i in range(n):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            clients.append(sock)
            round_trip(sock, b"hello %06d" % i)
        time.sleep(0.5)
        after = server.rss_kib()
        for i, sock in enumerate(clients):
            round_trip(sock, b"again %06d" % i)
    finally:
        for sock in clients:
            sock.close()
        status = server.stop()
    if status != 0 or server.problems():
        raise RuntimeError(f"server exit {status}: {server.problems()}")
    per_connection = (after - before) / n
    print(
        f"connections={n} rss_before={before} KiB rss_after={after} KiB "
        f"per_connection={per_connection:.2f} KiB",
        flush=True,
    )
    return per_connection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    raise_fd_limit(args.connections + 100)
    results = [one_run(args.connections) for _ in range(args.runs)]
    median = statistics.median(results)
    print(f"median KiB per idle connection at {args.connections}: {median:.2f}")


if __name__ == "__main__":
    main()
