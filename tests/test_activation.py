"""Socket activation: serving on inherited listening sockets (systemd, ``--fd``, serve()).

``--fd`` usage errors are ``test_cli.py``'s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_echo import serve
from trio_echo._sockets import bind_reuseport_groups, systemd_listen_fds

from .conftest import Spawn, make_config, receive_until_eof
from .processes import TRIO_ECHO, echo_once

# What systemd does between fork and exec: move the socket to descriptor 3 and
# set LISTEN_FDS and LISTEN_PID -- the PID of the process that will serve, which
# exec keeps.  argv: [fd, program, args...]
AS_SYSTEMD = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "os.dup2(fd, 3)\n"
    "os.close(fd)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1 and a free port, as a socket unit would make."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def test_systemd_socket_activation(spawn: Spawn, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    fd = listening.fileno()
    server = spawn(
        [sys.executable, "-c", AS_SYSTEMD, str(fd), TRIO_ECHO, "--rounds", "1"], pass_fds=[fd]
    )
    assert int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)")[1]) == port
    # Our copy is closed: the server's is the only one left, and it serves.
    listening.close()
    assert echo_once(port, b"activated") == b"activated"
    server.signal(signal.SIGTERM)
    status, log = server.finish()
    assert status == 0
    assert "reason=rounds" in log
    assert "Traceback" not in log


def test_systemd_socket_with_workers_is_shared(spawn: Spawn, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    fd = listening.fileno()
    server = spawn(
        [sys.executable, "-c", AS_SYSTEMD, str(fd), TRIO_ECHO, "--workers", "2"], pass_fds=[fd]
    )
    server.wait_for(r"\[worker 1\] listening on 127\.0\.0\.1")
    server.wait_for(r"\[worker 2\] listening on 127\.0\.0\.1")
    listening.close()
    for i in range(5):
        assert echo_once(port, b"%d" % i) == b"%d" % i
    server.signal(signal.SIGTERM)
    status, log = server.finish()
    assert status == 0
    assert "Traceback" not in log


def test_explicit_fd(spawn: Spawn, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    fd = listening.fileno()
    server = spawn([TRIO_ECHO, "--fd", str(fd)], pass_fds=[fd])
    assert int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)")[1]) == port
    assert echo_once(port, bytes(range(256))) == bytes(range(256))
    server.signal(signal.SIGINT)
    assert server.finish()[0] == 0


def test_listen_pid_of_another_process_is_ignored(spawn: Spawn) -> None:
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    server = spawn([TRIO_ECHO, "--port", "0"], env=env)
    port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)")[1])
    assert echo_once(port, b"bound itself") == b"bound itself"
    server.signal(signal.SIGTERM)
    assert server.finish()[0] == 0


@pytest.mark.system
@pytest.mark.parametrize(
    ("make_fd", "message"),
    [
        (lambda: os.pipe()[0], "Socket operation on non-socket"),
        (lambda: socket.socket().detach(), "is not a listening socket"),
        (lambda: socket.socket(type=socket.SOCK_DGRAM).detach(), "is not a stream socket"),
    ],
)
def test_bad_fd_is_one_line_and_exit_1(make_fd: object, message: str) -> None:
    assert callable(make_fd)
    fd = make_fd()
    try:
        result = subprocess.run(
            [TRIO_ECHO, "--fd", str(fd)],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=[fd],
        )
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert result.stderr.startswith("trio-echo: error: cannot serve on inherited sockets: fd ")
    assert f"fd {fd}" in result.stderr
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.system
def test_fd_not_open_is_one_line_naming_it_and_exit_1() -> None:
    result = subprocess.run([TRIO_ECHO, "--fd", "987"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == (
        "trio-echo: error: cannot serve on inherited sockets: fd 987: Bad file descriptor\n"
    )


def test_systemd_environment_is_parsed_and_removed() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "a:b", "HOME": "/"}
    assert systemd_listen_fds(env, 42) == [3, 4]
    assert env == {"HOME": "/"}
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "41"}
    assert systemd_listen_fds(env, 42) == []
    assert env == {}
    assert systemd_listen_fds({}, 42) == []
    with pytest.raises(ValueError, match="not numbers"):
        systemd_listen_fds({"LISTEN_FDS": "x", "LISTEN_PID": "42"}, 42)


async def test_serve_on_reuseport_listeners_from_the_api() -> None:
    (first,), (second,) = bind_reuseport_groups("127.0.0.1", 0, 2, None)
    assert first.getsockname() == second.getsockname()
    port = first.getsockname()[1]
    async with trio.open_nursery() as nursery:
        servers = []
        for sock in (first, second):
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            servers.append(await nursery.start(_serve_on, listener))
        accepted = 0
        for i in range(50):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"%d" % i)
                await stream.send_eof()
                assert await receive_until_eof(stream) == b"%d" % i
            accepted = min(server.statistics().accepted for server in servers)
            if accepted:
                break
        assert accepted > 0, "the kernel sent every connection to one socket"
        nursery.cancel_scope.cancel()


async def _serve_on(
    listener: trio.SocketListener, *, task_status: trio.TaskStatus[object]
) -> None:
    await serve(make_config(), listeners=[listener], task_status=task_status)


async def test_serve_refuses_empty_listeners() -> None:
    with pytest.raises(ValueError, match="listeners"):
        await serve(make_config(), listeners=[])


SYSTEMD_SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_SOCKET_ACTIVATE is None, reason="systemd-socket-activate not found")
def test_started_by_systemds_own_socket_activation(spawn: Spawn) -> None:
    assert SYSTEMD_SOCKET_ACTIVATE is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # It listens, and on the first connection execs trio-echo with the socket.
    server = spawn(
        [SYSTEMD_SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", TRIO_ECHO, "--workers", "2"]
    )
    server.wait_for(r"Listening on 127\.0\.0\.1:\d+ as 3")
    assert echo_once(port, b"first, and starts it") == b"first, and starts it"
    server.wait_for(rf"\[worker 1\] listening on 127\.0\.0\.1:{port}")
    server.wait_for(rf"\[worker 2\] listening on 127\.0\.0\.1:{port}")
    assert echo_once(port, b"second") == b"second"
    server.signal(signal.SIGTERM)
    status, log = server.finish()
    assert status == 0
    assert "Traceback" not in log


@pytest.mark.system
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not found")
def test_readme_systemd_units_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    units = re.findall(
        r"`/etc/systemd/system/(trio-echo\.\w+)`:\n\n```ini\n(.*?)```", readme, re.S
    )
    assert [name for name, _ in units] == ["trio-echo.socket", "trio-echo.service"]
    for name, text in units:
        # The README's path is where pip installs for root; verify needs a real file.
        (tmp_path / name).write_text(text.replace("/usr/local/bin/trio-echo", TRIO_ECHO))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *(str(tmp_path / name) for name, _ in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "trio-echo" not in result.stderr, result.stderr


def test_explicit_fd_with_workers(spawn: Spawn, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    fd = listening.fileno()
    server = spawn([TRIO_ECHO, "--fd", str(fd), "--workers", "2"], pass_fds=[fd])
    server.wait_for(rf"\[worker 1\] listening on 127\.0\.0\.1:{port}")
    server.wait_for(rf"\[worker 2\] listening on 127\.0\.0\.1:{port}")
    listening.close()
    assert echo_once(port, b"shared") == b"shared"
    server.signal(signal.SIGTERM)
    status, log = server.finish()
    assert status == 0
    assert "Traceback" not in log
