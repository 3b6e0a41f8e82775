"""A real HAProxy in front of two ``trio-echo --proxy-protocol`` instances, on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Spawn
from .processes import TRIO_ECHO, LoggingProcess


def find_haproxy() -> str | None:
    # Debian installs it in /usr/sbin, which an ordinary user's PATH may lack.
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


HAPROXY = find_haproxy()

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed and .ci/run could not install it"
)

CONFIG = """\
global
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend via_v1
    bind 127.0.0.1:{v1}
    default_backend echo_v1

frontend via_v2
    bind 127.0.0.1:{v2}
    default_backend echo_v2

backend echo_v1
    balance roundrobin
    server a 127.0.0.1:{a} send-proxy
    server b 127.0.0.1:{b} send-proxy

backend echo_v2
    balance roundrobin
    server a 127.0.0.1:{a} send-proxy-v2
    server b 127.0.0.1:{b} send-proxy-v2
"""


def free_port() -> int:
    # HAProxy binds its own sockets; a port just released by the kernel is free
    # unless another process takes it in between (then HAProxy fails loudly).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait, bounded, until a socket listens on 127.0.0.1:*port*.

    HAProxy logs no "ready" line, and a probing connection would be relayed to a
    backend and counted there, so this reads the kernel's table instead.
    """
    wanted = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/tcp") as table:
            # Columns: sl local_address rem_address st ...; st 0A is LISTEN.
            if any(f"{wanted} 00000000:0000 0A" in line for line in table):
                return
        assert time.monotonic() < deadline, f"nothing listens on port {port}"
        time.sleep(0.05)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; those still running at the end are stopped by PID."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.terminate()
        process.wait(10)


@pytest.mark.system
def test_haproxy_send_proxy_v1_and_v2(
    spawn: Spawn, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    assert HAPROXY is not None
    backends: list[LoggingProcess] = []
    ports = []
    for _ in range(2):
        backend = spawn([TRIO_ECHO, "--port", "0", "--proxy-protocol", "--log-level", "debug"])
        ports.append(int(backend.wait_for(r"listening on 127\.0\.0\.1:(\d+)")[1]))
        backends.append(backend)
    front = {"v1": free_port(), "v2": free_port()}
    config_path = tmp_path / "haproxy.cfg"
    config_path.write_text(CONFIG.format(a=ports[0], b=ports[1], **front))
    check = subprocess.run(
        [HAPROXY, "-c", "-q", "-f", str(config_path)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    with open(tmp_path / "haproxy.log", "wb") as haproxy_log:
        haproxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=haproxy_log,
            stderr=haproxy_log,
        )
        started.append(haproxy)
    for port in front.values():
        wait_listening(port)

    payload = os.urandom(200_000)
    clients: dict[str, list[int]] = {"v1": [], "v2": []}
    for version, port in front.items():
        for i in range(4):
            message = version.encode() + b"%d:" % i + payload
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                clients[version].append(sock.getsockname()[1])
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)
                echoed = bytearray()
                while chunk := sock.recv(65536):
                    echoed += chunk
            assert echoed == message

    haproxy.terminate()
    haproxy.wait(10)
    logs = []
    for backend in backends:
        backend.signal(signal.SIGTERM)
        status, log = backend.finish()
        assert status == 0
        assert "Traceback" not in log
        assert "proxy-error" not in log
        logs.append(log)
    # Round robin: each backend served half of each frontend's clients ...
    for log in logs:
        assert log.count("reason=eof") == 4, log
        assert "PROXY v1 header names the client" in log
        assert "PROXY v2 header names the client" in log
    # ... and logged the real client, not HAProxy's own connection.
    both = "".join(logs)
    for port in clients["v1"] + clients["v2"]:
        assert f"closed 127.0.0.1:{port}: rounds=" in both
