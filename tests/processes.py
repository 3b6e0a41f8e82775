"""A child process whose stderr (the log) is read line by line with deadlines."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

# The console script installed next to this interpreter.
TRIO_ECHO = str(Path(sys.executable).with_name("trio-echo"))


class LoggingProcess:
    """A child process and its stderr.  Lines read are kept: :meth:`wait_for`
    consumes the first line matching, :meth:`log` returns all seen so far."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            env=None if env is None else dict(env),
        )
        self.pid = self.proc.pid
        self.unread: list[str] = []
        self.seen: list[str] = []
        self._partial = b""
        self._eof = False

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Read stderr until a line matches *pattern*; fail after *timeout* seconds."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.unread:
                if match := compiled.search(line):
                    self.unread.remove(line)
                    return match
            if self._eof:
                pytest.fail(f"stderr ended before {pattern!r}: {self.seen}")
            if not self._read_some(deadline - time.monotonic()):
                pytest.fail(f"no line matching {pattern!r} in {timeout} s: {self.seen}")

    def _read_some(self, timeout: float) -> bool:
        """Read what stderr has (waiting at most *timeout* s); ``False`` if nothing came.

        Reads the pipe itself, unbuffered: with a buffered reader, select() would
        not see lines already pulled into the buffer (several processes write here).
        """
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            if timeout <= 0 or not selector.select(timeout):
                return False
        chunk = os.read(fd, 65536)
        if not chunk:
            self._eof = True
            chunk = b"\n" if self._partial else b""
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace") + "\n"
            self.unread.append(line)
            self.seen.append(line)
        return True

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Wait for exit; return the status and the whole log."""
        deadline = time.monotonic() + timeout
        while not self._eof and self._read_some(deadline - time.monotonic()):
            pass
        status = self.proc.wait(max(deadline - time.monotonic(), 0.1))
        return status, "".join(self.seen)

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def is_running(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids: Sequence[int], timeout: float = 15.0) -> None:
    """Wait, bounded, until none of *pids* is running; fail naming those left."""
    deadline = time.monotonic() + timeout
    # Polling, bounded: an unrelated process's exit gives this one no event to wait on.
    while (left := [pid for pid in pids if is_running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"still running: {left}"


def kill_if_running(pids: Sequence[int]) -> None:
    """Clean-up after a failed test: SIGKILL those of *pids* (ours) still running."""
    for pid in pids:
        if is_running(pid):
            os.kill(pid, signal.SIGKILL)


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything *sock* receives until the peer's EOF."""
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def echo_once(port: int, payload: bytes) -> bytes:
    """Connect, send *payload*, half-close, return everything echoed until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_until_eof(sock)


def fill_both_directions(sock: socket.socket) -> None:
    """Send without reading until *sock* can take no more: the server then blocks
    sending an echo nobody reads, and the client's buffers are full too."""
    sock.setblocking(False)
    try:
        for _ in range(10_000):
            sock.send(b"x" * 65536)
    except BlockingIOError:
        pass
