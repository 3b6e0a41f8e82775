"""The open file limit (``_fdlimit``): raised to what --max-connections needs, never lowered."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest

from trio_echo._fdlimit import FD_RESERVE, raise_fd_limit

from .conftest import StartProcess


def test_command_raises_soft_fd_limit_to_what_max_connections_needs(
    echo_process: StartProcess,
) -> None:
    server = echo_process("--max-connections", "500", nofile=(64, 4096))
    limits = Path(f"/proc/{server.pid}/limits").read_text()
    needed = 500 + FD_RESERVE
    assert re.search(rf"Max open files\s+{needed}\s+4096\s", limits), limits
    assert f"raised the open file limit from 64 to {needed}" in server.log
    assert server.stop() == 0


def test_command_warns_when_hard_fd_limit_is_too_low(echo_process: StartProcess) -> None:
    server = echo_process("--max-connections", "500", nofile=(64, 100))
    limits = Path(f"/proc/{server.pid}/limits").read_text()
    assert re.search(r"Max open files\s+100\s+100\s", limits), limits
    assert re.search(
        rf"WARNING the open file limit \(100\) is below the {500 + FD_RESERVE} that "
        r"--max-connections needs",
        server.log,
    )
    assert server.stop() == 0


def test_raise_fd_limit_reports_a_refused_setrlimit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(resource_id: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda resource_id: (64, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    raise_fd_limit(1000)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "cannot raise the open file limit from 64: not allowed"
    assert messages[1].startswith("the open file limit (64) is below the 1000")


def test_raise_fd_limit_never_lowers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda resource_id: (4096, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda resource_id, limits: calls.append(limits))
    raise_fd_limit(100)
    assert calls == []
    assert caplog.records == []
