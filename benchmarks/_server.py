"""A ``trio-echo`` child process for the benchmarks: start, find its port, read its RSS."""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

LISTENING = re.compile(r"listening on (\S+):(\d+)")


class EchoProcess:
    """``python -m trio_echo --port 0 ARGS``; stderr is drained by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_echo", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        for line in self.proc.stderr:
            self.lines.append(line)
            if match := LISTENING.search(line):
                self.port = int(match.group(2))
                break
        else:
            raise RuntimeError("trio-echo did not start:\n" + "".join(self.lines))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                self.lines.append(line)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        """SIGTERM, then the exit status (the process is killed after 30 s)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(5)

    def problems(self) -> list[str]:
        return [line for line in self.lines if "WARNING" in line or "Traceback" in line]


def raise_fd_limit(needed: int) -> None:
    """Let this (client) process open *needed* sockets, or exit with a message."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
