"""``trio-echo bench`` against its yardsticks: the Targets of issue 14, side by side in one run.

Usage::

    python benchmarks/bench_client.py                  # every figure, 3 alternations, ~3 min
    python benchmarks/bench_client.py --repeat 1 --seconds 2 --skip-accuracy   # a quick look
    python benchmarks/bench_client.py --skip-accuracy --baseline e34eab4  # before/after A/B

Throughput and overhead: ``c_epoll`` (``../shared/tools/c_epoll``, compiled here
with gcc) is the server, pinned to the first core; vmbench's ``echo_client``
(``../shared/tools/vmbench``, run with a Python that has numpy) and ``trio-echo
bench`` take turns on the second core, 1 KiB messages, with 8 and 50
connections (messages/s) and with 1 (p50).  Each pair runs ``--repeat`` times,
alternating, and the table shows medians.

The client's CPU time per round trip (user + system, start-up included, from
``RUSAGE_CHILDREN``) is reported beside: unlike messages/s it hardly depends on
what else the machine runs, and 1e6 / it bounds what one core can drive.

Accuracy: ``trio-echo --latency 20ms`` (p50 must be 20-22 ms), ``--latency 20ms
--jitter 10ms`` (p99 above 28 ms), and a ``trio-echo`` paused with SIGSTOP for
1 s in the middle of a 10 s run, measured in open loop (``--rate 1000``: p99
shows the stall) and closed loop (one connection: the stall is one slow round
trip, and hides).  The latency distributions go to ``--hgrm-dir`` and the
chart to ``--chart``.

Every load is bounded (``--seconds``, 10 s for the stall runs); every child
process is ended by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "tools"
TRIO_ECHO = str(Path(sys.executable).with_name("trio-echo"))
LISTENING = re.compile(r"listening on (\S+):(\d+)")


def cores() -> tuple[str, str]:
    """The server's core and the client's (the first two this process may use)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        sys.exit("needs two cores: one for the server, one for the client")
    return str(allowed[0]), str(allowed[1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except ConnectionRefusedError:
            if process.poll() is not None:
                sys.exit(f"{process.args!r} exited with {process.returncode}")
            time.sleep(0.02)
    sys.exit(f"nothing listens on {port}")


@contextmanager
def c_epoll(core: str) -> Iterator[int]:
    """c_epoll on *core*; yields its port; ended by its PID."""
    binary = Path(tempfile.gettempdir()) / f"c_epoll-{os.getuid()}"
    source = SHARED / "c_epoll" / "c_epoll.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    port = free_port()
    process = subprocess.Popen(["taskset", "-c", core, str(binary), str(port)])
    try:
        wait_listening(port, process)
        yield port
    finally:
        process.kill()
        process.wait()


@contextmanager
def trio_echo(core: str, *options: str) -> Iterator[subprocess.Popen[str]]:
    """``trio-echo --port 0 OPTIONS`` on *core*; yields the process (its port
    in ``.port``); ended by its PID."""
    process = subprocess.Popen(
        ["taskset", "-c", core, TRIO_ECHO, "--port", "0", *options],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if match := LISTENING.search(line):
                process.port = int(match.group(2))  # type: ignore[attr-defined]
                break
        # Keep reading stderr so the server never blocks on a full pipe.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield process
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()


def echo_client(
    python: str, core: str, port: int, connections: int, seconds: int
) -> dict[str, Any]:
    """vmbench's echo_client: messages/s and p50 (µs)."""
    done = subprocess.run(
        ["taskset", "-c", core, python, str(SHARED / "vmbench" / "echo_client.py"),
         "--addr", f"127.0.0.1:{port}", "--msize", "1024", "--concurrency", str(connections),
         "--duration", str(seconds), "--output-format", "json"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    report = json.loads(done.stdout)
    percentiles = {p: ms for p, ms in report["latency_percentiles"]}
    return {"rate": report["rps"], "p50_us": percentiles[50] * 1000}


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far,
    their own children included (echo_client's worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench(
    core: str, port: int, *options: str, seconds: float = 5, tree: Path | None = None
) -> dict[str, Any]:
    """``trio-echo bench --json`` on *core*; with *tree*, the ``trio_echo`` exported there."""
    command = [TRIO_ECHO] if tree is None else [sys.executable, "-m", "trio_echo"]
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    # In the tree, so that ``-m`` cannot find today's trio_echo in the working directory.
    done = subprocess.run(
        ["taskset", "-c", core, *command, "bench", f"127.0.0.1:{port}", "--json", *options],
        capture_output=True, text=True, timeout=seconds + 60, env=env, cwd=tree,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"trio-echo bench {' '.join(options)} failed: {done.stderr.strip()}")
    return dict(json.loads(done.stdout))


def timed_echo_client(
    python: str, core: str, port: int, connections: int, seconds: int
) -> dict[str, Any]:
    """:func:`echo_client`, with the client CPU per round trip it spent."""
    before = children_cpu()
    report = echo_client(python, core, port, connections, seconds)
    spent = children_cpu() - before
    report["client_cpu_us_per_rt"] = spent / max(1, report["rate"] * seconds) * 1e6
    return report


def timed_bench(
    core: str, port: int, options: Sequence[str], seconds: int, tree: Path | None = None
) -> dict[str, Any]:
    """:func:`bench`, with the client CPU per round trip it spent."""
    before = children_cpu()
    report = bench(core, port, *options, seconds=seconds, tree=tree)
    spent = children_cpu() - before
    report["client_cpu_us_per_rt"] = spent / max(1, report["round_trips"]) * 1e6
    return report


def throughput(args: argparse.Namespace, server: str, client: str) -> list[dict[str, Any]]:
    rows = []
    with c_epoll(server) as port:
        for connections in (8, 50, 1):
            theirs: list[dict[str, Any]] = []
            ours: list[dict[str, Any]] = []
            baseline: list[dict[str, Any]] = []
            seconds = args.seconds
            options = ("--connections", str(connections), "--size", "1KiB",
                       "--duration", f"{seconds}s")  # fmt: skip
            clients: list[tuple[list[dict[str, Any]], Callable[[], dict[str, Any]]]] = [
                (theirs, partial(timed_echo_client, args.python, client, port, connections,
                                 seconds)),
                (ours, partial(timed_bench, client, port, options, seconds)),
            ]  # fmt: skip
            if args.baseline_tree is not None:
                run = partial(timed_bench, client, port, options, seconds, args.baseline_tree)
                clients.append((baseline, run))
            for turn in range(args.repeat):
                # Each client goes first in turn: whoever follows another's
                # teardown (50 processes exiting) starts on a busier core.
                first = turn % len(clients)
                for reports, run in clients[first:] + clients[:first]:
                    reports.append(run())
            pairs = zip(baseline, ours, strict=False)
            before_after = [then["rate"] / now["rate"] for then, now in pairs]
            row = {
                "connections": connections,
                "echo_client_rate": statistics.median(r["rate"] for r in theirs),
                "bench_rate": statistics.median(r["rate"] for r in ours),
                "echo_client_p50_us": statistics.median(r["p50_us"] for r in theirs),
                "bench_p50_us": statistics.median(r["latency_us"]["p50"] for r in ours),
                "echo_client_cpu_us_per_rt": statistics.median(
                    r["client_cpu_us_per_rt"] for r in theirs
                ),
                "bench_cpu_us_per_rt": statistics.median(r["client_cpu_us_per_rt"] for r in ours),
                "runs": {"echo_client": theirs, "bench": [_brief(r) for r in ours]},
            }
            row["rate_ratio"] = row["bench_rate"] / row["echo_client_rate"]
            row["p50_ratio"] = row["bench_p50_us"] / row["echo_client_p50_us"]
            rows.append(row)
            print(f"  {connections:>2} connections: echo_client {row['echo_client_rate']:,.0f}/s "
                  f"p50 {row['echo_client_p50_us']:.0f} µs "
                  f"CPU {row['echo_client_cpu_us_per_rt']:.1f} µs/rt; "
                  f"bench {row['bench_rate']:,.0f}/s p50 {row['bench_p50_us']:.0f} µs "
                  f"CPU {row['bench_cpu_us_per_rt']:.1f} µs/rt", flush=True)  # fmt: skip
            if before_after:
                # Each ratio pairs two runs of the same turn, seconds apart.
                row["baseline_rate_ratio"] = statistics.median(before_after)
                print(f"      {args.baseline}: {row['baseline_rate_ratio']:.3f}x today's "
                      f"messages/s (median of {len(before_after)} pairs)", flush=True)  # fmt: skip
    return rows


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("rate", "latency_us", "client_cpu_us_per_rt")
    return {key: report[key] for key in keys}


def accuracy(args: argparse.Namespace, server: str, client: str) -> dict[str, Any]:
    hgrm = Path(args.hgrm_dir)
    hgrm.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name, options, percentile in (
        ("latency-20ms", ("--latency", "20ms"), "p50"),
        ("jitter-10ms", ("--latency", "20ms", "--jitter", "10ms"), "p99"),
    ):
        with trio_echo(server, *options) as process:
            report = bench(client, process.port, "--duration", "5s",  # type: ignore[attr-defined]
                           "--hgrm", str(hgrm / f"{name}.hgrm"))  # fmt: skip
        results[name] = {percentile + "_ms": report["latency_us"][percentile] / 1000,
                         "latency_us": report["latency_us"]}  # fmt: skip
        print(f"  {name}: {percentile} {results[name][percentile + '_ms']:.2f} ms", flush=True)
    for mode, options in (("open", ("--rate", "1000")), ("closed", ())):
        with trio_echo(server) as process:
            path = hgrm / f"stall-{mode}.hgrm"
            command = ["taskset", "-c", client, TRIO_ECHO, "bench",
                       f"127.0.0.1:{process.port}", "--json", "--duration", "10s",  # type: ignore[attr-defined]
                       "--hgrm", str(path), *options]  # fmt: skip
            running = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            time.sleep(4.5)
            process.send_signal(signal.SIGSTOP)
            time.sleep(1.0)
            process.send_signal(signal.SIGCONT)
            stdout, _ = running.communicate(timeout=60)
        report = json.loads(stdout)
        results[f"stall-{mode}"] = {"p99_ms": report["latency_us"]["p99"] / 1000,
                                    "max_ms": report["latency_us"]["max"] / 1000,
                                    "latency_us": report["latency_us"],
                                    "round_trips": report["round_trips"]}  # fmt: skip
        print(f"  1 s stall, {mode} loop: p99 {report['latency_us']['p99'] / 1000:.1f} ms, "
              f"max {report['latency_us']['max'] / 1000:.1f} ms", flush=True)  # fmt: skip
    return results


def chart(hgrm_dir: Path, output: Path) -> None:
    """Latency by percentile (HdrHistogram's plot) for the stall runs and the 20 ms server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    labels = {
        "stall-open": "1 s stall, open loop (--rate 1000)",
        "stall-closed": "1 s stall, closed loop (1 connection)",
        "jitter-10ms": "--latency 20ms --jitter 10ms",
        "latency-20ms": "--latency 20ms",
    }
    for name, label in labels.items():
        path = hgrm_dir / f"{name}.hgrm"
        if not path.exists():
            continue
        points = [line.split() for line in path.read_text().splitlines()[2:]]
        rows = [(float(p[0]), float(p[1])) for p in points if len(p) == 4 and p[0][0].isdigit()]
        axes.plot([1 / (1 - q) for _, q in rows], [v for v, _ in rows], label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    axes.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms)")
    axes.set_title("trio-echo bench: latency by percentile (trio-echo server, one core each)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="alternations per pair (median)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per throughput run")
    parser.add_argument("--python", default=shutil.which("python3") or "python3",
                        help="a Python with numpy, for echo_client")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "bench_client.json"))
    parser.add_argument("--hgrm-dir", default=str(Path(tempfile.gettempdir()) / "bench-hgrm"))
    parser.add_argument("--chart", default=str(ROOT / "docs" / "bench-latency.png"))
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run trio-echo bench from git revision REF in each turn "
                        "(before/after A/B)")  # fmt: skip
    args = parser.parse_args(argv)
    args.baseline_tree = None
    if args.baseline:
        # run.py's export: the revision's tree, git-ignored under benchmarks/results/.
        from run import BenchError, export_baseline

        into = ROOT / "benchmarks" / "results" / f"bench-baseline-{os.getpid()}"
        try:
            args.baseline_tree = export_baseline(args.baseline, into)
        except BenchError as exc:
            parser.error(str(exc))
    try:
        measure(args)
    finally:
        if args.baseline_tree is not None:
            shutil.rmtree(args.baseline_tree, ignore_errors=True)


def measure(args: argparse.Namespace) -> None:
    server, client = cores()
    load = os.getloadavg()
    print(f"server on core {server}, client on core {client}; load average {load[0]:.2f}")
    results: dict[str, Any] = {"load_before": load, "repeat": args.repeat}
    print("throughput and overhead against c_epoll, 1 KiB messages (medians):")
    results["throughput"] = throughput(args, server, client)
    if not args.skip_accuracy:
        print("accuracy against trio-echo:")
        results["accuracy"] = accuracy(args, server, client)
    results["load_after"] = os.getloadavg()
    # The figures are kept first: the chart needs matplotlib (the ``bench`` extra).
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average after: {results['load_after'][0]:.2f}; results in {args.out}")
    if not args.skip_accuracy:
        chart(Path(args.hgrm_dir), Path(args.chart))


if __name__ == "__main__":
    main()
