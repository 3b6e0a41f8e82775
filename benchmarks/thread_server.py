"""What a threaded server costs a test suite: serve_in_thread() start+stop, fixture per test.

1. ``serve_in_thread()``: from the call to the moment the port accepts, plus
   leaving the block (graceful shutdown, thread joined), ``--cycles`` times;
   median, 90th percentile and worst.  Each cycle also makes one connection
   and echo round trip, so that "ready" is proven, not assumed (timed apart).
2. A function-scoped ``echo_server`` in ``--tests`` sync tests: pytest runs a
   generated file of that many tests asking for ``echo_server``, and the same
   file without the fixture, alternately, ``--suite-runs`` times each, in
   child processes; the added cost is the difference of the median wall times.

Run it pinned to one core, away from other load::

    taskset -c 1 python benchmarks/thread_server.py [--cycles 200] [--tests 200] [--suite-runs 5]

Every loop is bounded by its count; each pytest run by a 120 s timeout.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio_echo

WITH_FIXTURE = """
def test_{n}(echo_server):
    assert echo_server.port > 0
"""
WITHOUT_FIXTURE = """
def test_{n}():
    assert {n} >= 0
"""


def start_stop_cycles(cycles: int) -> tuple[list[float], list[float]]:
    """Seconds per start+shutdown cycle, and per round trip (not in the first list)."""
    lifecycle: list[float] = []
    round_trips: list[float] = []
    for _ in range(cycles):
        start = time.perf_counter()
        with trio_echo.serve_in_thread() as server:
            ready = time.perf_counter()
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
            answered = time.perf_counter()
        stopped = time.perf_counter()
        lifecycle.append((ready - start) + (stopped - answered))
        round_trips.append(answered - ready)
    return lifecycle, round_trips


def suite_seconds(directory: Path, name: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"pytest {name} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def fixture_cost(tests: int, runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds of the suite with the fixture and without, alternating A/B."""
    with tempfile.TemporaryDirectory(prefix="thread-bench-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text("[pytest]\n")
        (directory / "test_with.py").write_text(
            "".join(WITH_FIXTURE.format(n=n) for n in range(tests))
        )
        (directory / "test_without.py").write_text(
            "".join(WITHOUT_FIXTURE.format(n=n) for n in range(tests))
        )
        with_fixture: list[float] = []
        without: list[float] = []
        for _ in range(runs):
            with_fixture.append(suite_seconds(directory, "test_with.py"))
            without.append(suite_seconds(directory, "test_without.py"))
    return with_fixture, without


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--suite-runs", type=int, default=5)
    args = parser.parse_args()

    start_stop_cycles(5)  # warm-up: imports, first thread
    lifecycle, round_trips = start_stop_cycles(args.cycles)
    deciles = statistics.quantiles(lifecycle, n=10)
    print(
        f"serve_in_thread start-to-ready + shutdown, {args.cycles} cycles: "
        f"median {ms(statistics.median(lifecycle))}, p90 {ms(deciles[-1])}, "
        f"worst {ms(max(lifecycle))} (one echo round trip in each, not counted: "
        f"median {ms(statistics.median(round_trips))})"
    )

    with_fixture, without = fixture_cost(args.tests, args.suite_runs)
    added = statistics.median(with_fixture) - statistics.median(without)
    print(
        f"{args.tests} sync tests, median of {args.suite_runs} runs: "
        f"{statistics.median(with_fixture):.2f} s with a function-scoped echo_server, "
        f"{statistics.median(without):.2f} s without: +{added:.2f} s "
        f"({ms(added / args.tests)} per test)"
    )


if __name__ == "__main__":
    main()
