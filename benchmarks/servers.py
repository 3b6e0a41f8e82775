"""The echo servers the benchmark compares, one per subprocess.

Usage: ``python benchmarks/servers.py NAME [--framing raw|line] [--max-connections N]``

Each server binds 127.0.0.1 on an ephemeral port, prints ``PORT <n>`` on stdout
once it accepts connections, and serves until SIGTERM.  ``raw`` echoes what one
receive returns; ``line`` echoes complete ``\\n``-terminated lines (the peers
batch every complete line of one receive into one write, as trio-echo does).

The peers are written the way their documentation shows -- the idiomatic loop a
user would write -- not tuned: the point is what a user would otherwise pick.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

HOST = "127.0.0.1"
READ_SIZE = 65536


def announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


class LineSplitter:
    """Keeps the partial line; returns every complete line received so far."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        data = self._pending + data if self._pending else data
        end = data.rfind(b"\n") + 1
        self._pending = data[end:]
        return data[:end]


# -- trio ---------------------------------------------------------------------------


def run_trio_echo(framing: str, max_connections: int) -> None:
    """The real trio_echo.serve() with its default config (all features on)."""
    import trio

    import trio_echo

    config = trio_echo.ServerConfig(
        listener=trio_echo.ListenerConfig(port=0, max_connections=max_connections),
        connection=trio_echo.ConnectionConfig(framing="line" if framing == "line" else "raw"),
    )

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(trio_echo.serve, config)
                announce(server.port)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


def run_trio_serve_tcp(framing: str, max_connections: int) -> None:
    """Idiomatic trio: serve_tcp + receive_some/send_all, no features."""
    import trio

    async def handler(stream: trio.SocketStream) -> None:
        splitter = LineSplitter() if framing == "line" else None
        try:
            while data := await stream.receive_some(READ_SIZE):
                if splitter is not None:
                    data = splitter.feed(data)
                    if not data:
                        continue
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
                announce(listeners[0].socket.getsockname()[1])
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


# -- asyncio (and uvloop, the same code on its loop) --------------------------------


async def asyncio_streams(framing: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if framing == "line":
                while line := await reader.readline():
                    writer.write(line)
                    await writer.drain()
            else:
                while data := await reader.read(READ_SIZE):
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handler, HOST, 0, limit=READ_SIZE)
    await serve_until_sigterm(server)


class EchoProtocol(asyncio.Protocol):
    def __init__(self, framing: str) -> None:
        self.splitter = LineSplitter() if framing == "line" else None
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.splitter is not None:
            data = self.splitter.feed(data)
            if not data:
                return
        self.transport.write(data)


async def asyncio_protocol(framing: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoProtocol(framing), HOST, 0)
    await serve_until_sigterm(server)


async def serve_until_sigterm(server: asyncio.Server) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await stop.wait()


def run_asyncio(coro: Callable[[str], Any], framing: str, *, uvloop: bool) -> None:
    if uvloop:
        import uvloop as uv

        uv.run(coro(framing))
    else:
        asyncio.run(coro(framing))


# -- a thread per connection ---------------------------------------------------------


def run_threads(framing: str, max_connections: int) -> None:
    def handler(conn: socket.socket) -> None:
        splitter = LineSplitter() if framing == "line" else None
        with conn:
            try:
                while data := conn.recv(READ_SIZE):
                    if splitter is not None:
                        data = splitter.feed(data)
                    conn.sendall(data)
            except OSError:
                pass

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with socket.create_server((HOST, 0), backlog=4096) as listener:
        announce(listener.getsockname()[1])
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handler, args=(conn,), daemon=True).start()


SERVERS: dict[str, Callable[[str, int], None]] = {
    "trio-echo": run_trio_echo,
    "trio-serve-tcp": run_trio_serve_tcp,
    "asyncio-streams": lambda f, n: run_asyncio(asyncio_streams, f, uvloop=False),
    "asyncio-protocol": lambda f, n: run_asyncio(asyncio_protocol, f, uvloop=False),
    "uvloop-streams": lambda f, n: run_asyncio(asyncio_streams, f, uvloop=True),
    "uvloop-protocol": lambda f, n: run_asyncio(asyncio_protocol, f, uvloop=True),
    "threads": run_threads,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SERVERS))
    parser.add_argument("--framing", choices=("raw", "line"), default="raw")
    parser.add_argument("--max-connections", type=int, default=20000)
    args = parser.parse_args()
    try:
        SERVERS[args.name](args.framing, args.max_connections)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
