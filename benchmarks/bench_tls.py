"""TLS echo throughput, and what the record-aligned transport costs.

Usage: python benchmarks/bench_tls.py [--runs 5] [--clients 4] [--megabytes 16]

Each run starts a TLS server, has CLIENTS clients each echo MEGABYTES through it
(16 KiB writes, reading concurrently), and reports MB/s one way.  Two variants:
``aligned`` is the server as shipped (ServerTransport hands SSLStream whole TLS
records); ``unaligned`` patches ServerTransport.receive_some to pass chunks
straight through, to measure the cost of the alignment.  Prints the median of
the runs.  The machine is shared: compare medians, not single runs.
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import trio
import trustme

from trio_echo import ConnectionConfig, ListenerConfig, ServerConfig, TLSConfig, serve
from trio_echo._tls import ServerTransport

CHUNK = 16384


async def one_client(port: int, context: ssl.SSLContext, total: int) -> None:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    payload = b"x" * CHUNK

    async def send() -> None:
        for _ in range(total // CHUNK):
            await stream.send_all(payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        received = 0
        while received < total:
            received += len(await stream.receive_some(65536))
    await stream.aclose()


async def run_once(tls: TLSConfig, context: ssl.SSLContext, clients: int, total: int) -> float:
    config = ServerConfig(listener=ListenerConfig(port=0), connection=ConnectionConfig(), tls=tls)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, config)
        started = time.perf_counter()
        with trio.fail_after(300):
            async with trio.open_nursery() as inner:
                for _ in range(clients):
                    inner.start_soon(one_client, server.port, context, total)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return clients * total / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=16)
    args = parser.parse_args()
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as where:
        certfile = Path(where) / "server.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
        tls = TLSConfig(certfile=certfile)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        total = args.megabytes * 1_000_000 // CHUNK * CHUNK
        aligned = ServerTransport.receive_some

        async def unaligned(self: ServerTransport, max_bytes: int | None = None) -> bytes:
            transport = self.transport
            while (data := transport.try_receive()) is None:
                await transport.wait_receivable()
            return bytes(data)

        for name, receive in (("aligned", aligned), ("unaligned", unaligned)):
            ServerTransport.receive_some = receive  # type: ignore[method-assign]
            rates = [
                trio.run(run_once, tls, context, args.clients, total) for _ in range(args.runs)
            ]
            print(
                f"{name:9}: median {statistics.median(rates):7.1f} MB/s "
                f"(runs: {', '.join(f'{r:.1f}' for r in rates)})"
            )
        ServerTransport.receive_some = aligned  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
