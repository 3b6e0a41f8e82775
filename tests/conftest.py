"""Fixtures and helpers shared by the integration tests.

Servers come from the package's own pytest plugin (``echo_server`` and
``echo_server_factory``), loaded through its entry point as for any user.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import ssl
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme

from trio_echo import ConnectionConfig, EchoServer, ListenerConfig, ServerConfig, TLSConfig
from trio_echo._assembly import Shared
from trio_echo._connection import Connection
from trio_echo._faults import FaultTransport
from trio_echo._overrides import replace_fields
from trio_echo._streams import SocketTransport, StreamTransport
from trio_echo._tls import TLSHandshake, TLSTransport, server_context
from trio_echo._transports import Step, Transport

from .processes import TRIO_ECHO, LoggingProcess

pytest_plugins = ["pytester"]


def make_config(**overrides: Any) -> ServerConfig:
    """A config on 127.0.0.1 and an ephemeral port, with fields replaced by bare name
    (as ``echo_server_factory`` does), for tests that run :func:`serve` themselves."""
    return replace_fields(ServerConfig(listener=ListenerConfig(port=0)), **overrides)


Connect = Callable[[EchoServer], Awaitable[trio.SocketStream]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open client streams to a server; every one is closed when the test ends."""
    streams: list[trio.SocketStream] = []

    async def open_client(server: EchoServer) -> trio.SocketStream:
        host, port = server.addresses[0]
        stream = await trio.open_tcp_stream(host, port)
        streams.append(stream)
        return stream

    yield open_client
    for stream in streams:
        await trio.aclose_forcefully(stream)


async def receive_until_eof(stream: trio.abc.ReceiveStream, limit: float = 10.0) -> bytes:
    """Everything the peer sends until its EOF; a reset raises BrokenResourceError."""
    received = bytearray()
    with trio.fail_after(limit):
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int, limit: float = 10.0) -> bytes:
    received = bytearray()
    with trio.fail_after(limit):
        while len(received) < n:
            chunk = await stream.receive_some(n - len(received))
            if not chunk:
                raise EOFError(f"EOF after {len(received)} of {n} bytes")
            received += chunk
    return bytes(received)


def reset_on_close(sock: socket.socket | trio.socket.SocketType) -> None:
    """Make closing *sock* send a TCP reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll *predicate* (state the server updates asynchronously) until true, bounded."""
    with trio.fail_after(limit):
        # Polling, bounded: the kernel delivers the client's actions to the server
        # asynchronously, and the server exposes no event per counter.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


# ---- the real console script as a child process ----

# Tests that start child processes through these fixtures are system tests
# (``pytest -m "not system"`` leaves them out), marked or not in their module.
PROCESS_FIXTURES = frozenset({"echo_process", "spawn"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)


LISTENING = re.compile(r"listening on (\S+):(\d+)")


class EchoProcess:
    """A ``trio-echo`` child process on an ephemeral port.

    A thread reads its stderr line by line as it comes, so a busy server never
    blocks on a full pipe; :meth:`wait_for` waits for a matching line.  *nofile*
    sets the child's ``RLIMIT_NOFILE`` (soft, hard) before it starts.
    """

    def __init__(self, *args: str, nofile: tuple[int, int] | None = None) -> None:
        def limit_files() -> None:  # pragma: no cover - runs in the child
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            [TRIO_ECHO, "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit_files,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for(LISTENING).group(2))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        self.proc.stderr.close()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """The first stderr line matching *pattern*, waiting up to *timeout* seconds."""
        found: list[re.Match[str]] = []

        def search() -> bool:
            found.extend(m for line in self.lines if (m := re.search(pattern, line)))
            return bool(found) or self._ended

        with self._changed:
            self._changed.wait_for(search, timeout)
        if not found:
            raise AssertionError(f"no stderr line matching {pattern!r}:\n{self.log}")
        return found[0]

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def rss_kib(self) -> int:
        """The child's resident set size (``VmRSS``) in KiB."""
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the child has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def finish(self, timeout: float = 10.0) -> tuple[int, str]:
        """Wait for the exit and the end of stderr; return the status and the whole log."""
        status = self.proc.wait(timeout)
        self._reader.join(timeout)
        return status, self.log

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send *signum*; return the exit status once stderr has ended too."""
        self.proc.send_signal(signum)
        return self.finish(timeout)[0]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


StartProcess = Callable[..., EchoProcess]


@pytest.fixture
def echo_process() -> Iterator[StartProcess]:
    """Start ``trio-echo`` child processes; any still running at the end are killed."""
    started: list[EchoProcess] = []

    def start(*args: str, nofile: tuple[int, int] | None = None) -> EchoProcess:
        process = EchoProcess(*args, nofile=nofile)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def fd_headroom() -> Iterator[Callable[[int], None]]:
    """Raise this process's soft RLIMIT_NOFILE to at least *n* (skip if the hard
    limit forbids it); restored when the test ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def ensure(n: int) -> None:
        if soft != resource.RLIM_INFINITY and soft < n:
            if hard != resource.RLIM_INFINITY and hard < n:
                pytest.skip(f"needs {n} file descriptors; the hard limit is {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield ensure
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


Spawn = Callable[..., LoggingProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start LoggingProcesses (same arguments); those still running when the test
    ends are killed by PID."""
    started: list[LoggingProcess] = []

    def start(*args: Any, **kwargs: Any) -> LoggingProcess:
        process = LoggingProcess(*args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


# ---- connections under test, without a server ----


def build_connection(
    base: trio.abc.Stream | socket.socket,
    config: ConnectionConfig,
    *,
    peer: str = "test",
    tls: ssl.SSLContext | None = None,
    fault_events: Counter[str] | None = None,
) -> Connection:
    """A Connection composed as the server composes one: *base* (a stream, or a
    non-blocking socket driven directly), TLS over it with *tls*, faults over
    that when ``config.faults`` has one on (counted in *fault_events*)."""
    transport: Transport
    steps: list[Step] = []
    if isinstance(base, socket.socket):
        transport = SocketTransport(base, buffer=memoryview(bytearray(config.max_message)))
    else:
        transport = StreamTransport(base, max_bytes=config.max_message)
    if tls is not None:
        tls_transport = TLSTransport(transport, tls, max_bytes=config.max_message)
        steps.append(TLSHandshake(tls_transport, 10.0))
        transport = tls_transport
    if config.faults.enabled:
        faulty = FaultTransport(
            transport,
            config.faults,
            seed=config.faults.seed,
            events=Counter() if fault_events is None else fault_events,
        )
        steps.append(faulty.start)
        transport = faulty
    return Connection(transport, Shared.of(config), peer=peer, steps=tuple(steps))


# ---- TLS certificates ----


@attrs.frozen
class Certificates:
    ca: trustme.CA
    certfile: Path
    keyfile: Path
    ca_file: Path

    def tls(self, **changes: Any) -> TLSConfig:
        return attrs.evolve(TLSConfig(certfile=self.certfile, keyfile=self.keyfile), **changes)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    where = tmp_path_factory.mktemp("tls")
    certfile, keyfile, ca_file = where / "cert.pem", where / "key.pem", where / "ca.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(ca_file))
    return Certificates(ca=ca, certfile=certfile, keyfile=keyfile, ca_file=ca_file)


# ---- one connection under test, parametrised over transports ----

#: The transports every loop behaviour is tested over.
TRANSPORTS = ("memory", "socket", "tls")
#: Those whose client can half-close (TLS's EOF is close_notify, then no reading).
HALF_CLOSEABLE = ("memory", "socket")


async def serve_in(nursery: trio.Nursery, conn: Connection) -> trio.Event:
    """Start conn.serve() in *nursery*; the event is set when it returns."""
    done = trio.Event()

    async def run() -> None:
        try:
            await conn.serve()
        finally:
            done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return done


@attrs.frozen
class UnderTest:
    """A connection (not started) and the client's end of its transport."""

    conn: Connection
    client: trio.abc.Stream
    #: The server's socket, for the plain-socket transport.
    server_socket: socket.socket | None = None

    async def start(self, nursery: trio.Nursery) -> trio.Event:
        """Serve in *nursery* (over TLS, once the handshake is done); the event
        is set when serve() returns."""
        done = await serve_in(nursery, self.conn)
        if isinstance(self.client, trio.SSLStream):
            await self.client.do_handshake()
        return done

    async def half_close(self) -> None:
        """The client's EOF (only for the HALF_CLOSEABLE transports)."""
        assert isinstance(self.client, trio.abc.HalfCloseableStream)
        await self.client.send_eof()


MakeConnection = Callable[..., UnderTest]


@pytest.fixture
def make_connection(certificates: Certificates) -> Iterator[MakeConnection]:
    """``make_connection(kind, **connection_config)``: a connection over *kind*.

    ``memory``: trio's memory streams (unbounded buffers); ``socket``: a plain
    socket of a socketpair, driven directly as the server does; ``tls``: TLS
    (handshake step included) over memory streams, the client a
    :class:`trio.SSLStream`.  Sockets are closed when the test ends.
    """
    sockets: list[socket.socket] = []

    def make(kind: str, **config: Any) -> UnderTest:
        conf = ConnectionConfig(**config)
        if kind == "socket":
            ours, theirs = socket.socketpair()
            sockets.extend((ours, theirs))
            ours.setblocking(False)
            client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
            return UnderTest(conn=build_connection(ours, conf), client=client, server_socket=ours)
        server_side, client_side = trio.testing.memory_stream_pair()
        if kind == "memory":
            return UnderTest(conn=build_connection(server_side, conf), client=client_side)
        assert kind == "tls", kind
        context = server_context(certificates.tls())
        conn = build_connection(server_side, conf, tls=context)
        tls_client = trio.SSLStream(
            client_side, certificates.client_context(), server_hostname="127.0.0.1"
        )
        return UnderTest(conn=conn, client=tls_client)

    yield make
    for sock in sockets:
        sock.close()


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so that this branch runs on its own; the project's
    # pyproject.toml registers it for everyone.
    config.addinivalue_line(
        "markers", "system: runs trio-echo or a third-party program as a child process"
    )
