"""Soak: one million byte-exact round trips over many connections; the server's RSS stays flat.

Starts ``trio-echo`` as a child process and runs ``--connections`` clients (trio
tasks in this process), each sending messages of random size and content and
checking that each echo is exactly the message before sending the next.  The
server's VmRSS is read at start, after the warm-up (the first ``--warm-up``
fraction of the round trips) and at the end; growth after warm-up must stay
under 5 %.  Bounded by ``--time-limit``.

    python benchmarks/soak.py [--round-trips 1000000] [--connections 100]
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import trio

# Run as a script: its directory is on sys.path.
from _server import EchoProcess, raise_fd_limit


class Soak:
    def __init__(self, server: EchoProcess, total: int, warm_up: int) -> None:
        self.server = server
        self.total = total
        self.warm_up = warm_up
        self.done = 0
        self.rss_warm: int | None = None

    async def client(self, seed: int, round_trips: int) -> None:
        rng = random.Random(seed)
        stream = await trio.open_tcp_stream("127.0.0.1", self.server.port)
        async with stream:
            for _ in range(round_trips):
                message = rng.randbytes(rng.randrange(1, 1025))
                await stream.send_all(message)
                echoed = bytearray()
                while len(echoed) < len(message):
                    chunk = await stream.receive_some(len(message) - len(echoed))
                    if not chunk:
                        raise RuntimeError(f"client {seed}: EOF before the echo")
                    echoed += chunk
                if echoed != message:
                    raise RuntimeError(f"client {seed}: echo differs from the message")
                self.done += 1
                if self.rss_warm is None and self.done >= self.warm_up:
                    self.rss_warm = self.server.rss_kib()
            await stream.send_eof()
            if await stream.receive_some():
                raise RuntimeError(f"client {seed}: bytes after the last echo")

    async def run(self, connections: int, time_limit: float) -> None:
        per_client, extra = divmod(self.total, connections)
        with trio.fail_after(time_limit):
            async with trio.open_nursery() as nursery:
                for i in range(connections):
                    nursery.start_soon(self.client, i, per_client + (i < extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--round-trips", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--warm-up", type=float, default=0.1, help="fraction (default 0.1)")
    parser.add_argument("--time-limit", type=float, default=1200.0, help="seconds")
    args = parser.parse_args()
    raise_fd_limit(args.connections + 100)
    server = EchoProcess("--max-connections", str(args.connections + 1), "--idle-timeout", "0")
    rss_start = server.rss_kib()
    soak = Soak(server, args.round_trips, int(args.round_trips * args.warm_up))
    started = time.monotonic()
    try:
        trio.run(soak.run, args.connections, args.time_limit)
        elapsed = time.monotonic() - started
        rss_end = server.rss_kib()
    finally:
        status = server.stop()
    if status != 0 or server.problems():
        sys.exit(f"server exit {status}: {server.problems()}")
    assert soak.rss_warm is not None
    growth = (rss_end - soak.rss_warm) / soak.rss_warm * 100
    print(
        f"round_trips={soak.done} connections={args.connections} seconds={elapsed:.1f} "
        f"rate={soak.done / elapsed:.0f}/s rss_start={rss_start} KiB "
        f"rss_after_warm_up={soak.rss_warm} KiB rss_end={rss_end} KiB growth={growth:+.2f} %"
    )
    if soak.done != args.round_trips:
        sys.exit("not every round trip completed")
    if growth >= 5:
        sys.exit(f"RSS grew {growth:.2f} % after warm-up (limit 5 %)")


if __name__ == "__main__":
    main()
