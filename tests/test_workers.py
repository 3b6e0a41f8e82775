"""The supervisor (``_supervisor``, ``--workers N``): its worker processes, signals, restarts.

Its usage errors are ``test_cli.py``'s; its start-up errors ``test_roles.py``'s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from trio_echo._sockets import bind_reuseport_groups, describe_sockets

from .conftest import Spawn
from .processes import (
    TRIO_ECHO,
    LoggingProcess,
    echo_once,
    fill_both_directions,
    kill_if_running,
    wait_gone,
)

STARTED = r"started worker (\d+) \(pid (\d+)\)"


@pytest.fixture
def worker_pids() -> Iterator[list[int]]:
    """Worker PIDs a test learned; any still running when it ends are killed."""
    pids: list[int] = []
    yield pids
    kill_if_running(pids)


def start_workers(spawn: Spawn, pids: list[int], *args: str) -> tuple[LoggingProcess, int]:
    """Start ``trio-echo --workers 2`` on a free port; wait until both listen.

    *pids* gets the workers' PIDs, in the order of their numbers."""
    parent = spawn([TRIO_ECHO, "--port", "0", "--workers", "2", *args])
    port = int(parent.wait_for(r"\[supervisor\] starting 2 workers on 127\.0\.0\.1:(\d+)")[1])
    for number in (1, 2):
        pids.append(int(parent.wait_for(rf"started worker {number} \(pid (\d+)\)")[1]))
    for number in (1, 2):
        assert int(parent.wait_for(rf"\[worker {number}\] listening on \S+:(\d+)")[1]) == port
    return parent, port


def test_both_workers_serve_the_same_port(spawn: Spawn, worker_pids: list[int]) -> None:
    parent, port = start_workers(spawn, worker_pids, "--rounds", "1")
    served: set[str] = set()
    # The kernel hashes each connection to one socket: a few dozen reach both.
    for i in range(200):
        payload = f"message {i}".encode()
        assert echo_once(port, payload) == payload
        served.add(parent.wait_for(r"\[worker (\d)\] closed \S+: rounds=1 ")[1])
        if served == {"1", "2"}:
            break
    assert served == {"1", "2"}
    parent.signal(signal.SIGTERM)
    status, log = parent.finish()
    assert status == 0
    assert "Traceback" not in log


def test_killed_worker_is_restarted_and_serves(spawn: Spawn, worker_pids: list[int]) -> None:
    parent, port = start_workers(spawn, worker_pids)
    victim = worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    parent.wait_for(r"worker 1 was killed by SIGKILL unexpectedly; restarting in 0\.5 s")
    number, pid = parent.wait_for(STARTED).groups()
    worker_pids.append(int(pid))
    assert (number, int(pid) != victim) == ("1", True)
    parent.wait_for(r"\[worker 1\] listening on")
    # Whichever socket the kernel picks, it is served (the backlog survived).
    for i in range(20):
        assert echo_once(port, b"after restart %d" % i) == b"after restart %d" % i
    parent.signal(signal.SIGTERM)
    status, log = parent.finish()
    assert status == 0
    assert "Traceback" not in log
    wait_gone(worker_pids)


def test_stopped_worker_is_killed_and_restarted(spawn: Spawn, worker_pids: list[int]) -> None:
    parent, port = start_workers(spawn, worker_pids, "--worker-timeout", "1500ms")
    victim = worker_pids[0]
    # A worker whose loop no longer runs: without the heartbeat, about half of
    # the new clients would wait in its backlog until shutdown.
    os.kill(victim, signal.SIGSTOP)
    parent.wait_for(
        rf"WARNING \[supervisor\] worker 1 \(pid {victim}\) sent no heartbeat for 1\.5 s"
    )
    parent.wait_for(r"worker 1 was killed by SIGKILL unexpectedly; restarting in 0\.5 s")
    number, pid = parent.wait_for(STARTED).groups()
    worker_pids.append(int(pid))
    assert number == "1"
    parent.wait_for(r"\[worker 1\] listening on")
    # Its backlog was kept: whichever socket the kernel picks, every client is served.
    for i in range(20):
        assert echo_once(port, b"after restart %d" % i) == b"after restart %d" % i
    parent.signal(signal.SIGTERM)
    status, log = parent.finish()
    assert status == 0
    # Only the stopped worker: the running one was never silent that long.
    assert "stopped: all 2 workers exited; 1 restarts, 1 unresponsive workers killed" in log
    assert "Traceback" not in log
    wait_gone(worker_pids)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_parent_stops_workers_gracefully(
    spawn: Spawn, worker_pids: list[int], signum: signal.Signals
) -> None:
    parent, port = start_workers(spawn, worker_pids, "--framing", "line")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"hello\nwor")
        assert client.recv(100) == b"hello\n"
        parent.signal(signum)
        # The worker holding the connection echoes the partial line, then EOF.
        rest = bytearray()
        while chunk := client.recv(100):
            rest += chunk
        assert rest == b"wor"
    status, log = parent.finish()
    assert status == 0
    assert f"[supervisor] {signum.name} received: stopping 2 workers" in log
    assert log.count(f"{signum.name} received: shutting down gracefully") == 2
    assert "[supervisor] stopped: all 2 workers exited" in log
    assert "Traceback" not in log
    wait_gone(worker_pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10)


def test_killed_parent_takes_its_workers_along(spawn: Spawn, worker_pids: list[int]) -> None:
    parent, _ = start_workers(spawn, worker_pids)
    parent.proc.kill()
    parent.proc.wait()
    # PR_SET_PDEATHSIG: each worker gets SIGTERM and shuts down gracefully.
    wait_gone(worker_pids)


@pytest.mark.system
def test_worker_whose_supervisor_is_gone_does_not_start() -> None:
    # PID 1 is never this test's process, so the "supervisor" is not the parent.
    result = subprocess.run(
        [TRIO_ECHO, "--port", "0", "--worker-of", "1:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "[worker 1] the supervisor (pid 1) is gone; not starting" in result.stderr
    assert "listening" not in result.stderr


def test_second_signal_to_parent_stops_workers_at_once(
    spawn: Spawn, worker_pids: list[int]
) -> None:
    parent, port = start_workers(spawn, worker_pids, "--grace", "60")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        fill_both_directions(client)
        parent.signal(signal.SIGTERM)
        parent.wait_for(r"\[worker \d\] shutting down: 1 connection")
        parent.signal(signal.SIGTERM)
        status, log = parent.finish(timeout=15)
    assert status == 0, log
    assert "[supervisor] SIGTERM received again: workers stop now" in log
    assert "received again: stopping now" in log
    wait_gone(worker_pids)


def test_reuseport_groups_share_a_port_per_address() -> None:
    groups = bind_reuseport_groups("::1", 0, 3, 16)
    try:
        names = {sock.getsockname()[:2] for group in groups for sock in group}
        assert len(names) == 1
        assert [len(group) for group in groups] == [1, 1, 1]
        assert describe_sockets(groups[0]) == f"[::1]:{names.pop()[1]}"
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def test_reuseport_bind_failure_leaves_nothing_open() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError, match="in use"):
            bind_reuseport_groups("127.0.0.1", taken.getsockname()[1], 2, None)
        assert len(os.listdir("/proc/self/fd")) == before


def test_json_log_lines_name_the_process(spawn: Spawn, worker_pids: list[int]) -> None:
    parent = spawn([TRIO_ECHO, "--port", "0", "--workers", "2", "--log-format", "json"])
    for _ in range(2):
        parent.wait_for(r'"message":"listening on ')
    parent.signal(signal.SIGTERM)
    status, log = parent.finish()
    assert status == 0
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    worker_pids.extend(
        int(match[1])
        for record in records
        if (match := re.search(r"started worker \d \(pid (\d+)\)", record["message"]))
    )
    assert len(worker_pids) == 2
    assert {record["process"] for record in records} == {"supervisor", "worker 1", "worker 2"}
    wait_gone(worker_pids)
