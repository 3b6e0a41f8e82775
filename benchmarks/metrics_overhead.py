"""CPU per round trip with ``--metrics`` on and scraped every second, against metrics off.

Usage (from a checkout with ``trio-echo[metrics]`` installed; loopback only, bounded)::

    python benchmarks/metrics_overhead.py [--trials 7] [--duration 5] [--scrape-interval 1]

Each trial starts the real ``trio-echo`` command pinned to one core, either
plain (``off``) or with ``--metrics 0`` (``on``), alternating so that machine
noise hits both alike; the load generator of ``run.py`` (the compiled C one
when a compiler is found) runs 64-byte ping-pong over 50 connections on the
other core, measuring the server's CPU time over its window; with metrics on,
a scraper in this process GETs ``/metrics`` every ``--scrape-interval``
seconds for the whole trial, as Prometheus would.  It prints each trial, the
medians side by side and their ratio.  The scrapes' CPU cost is in the
server's CPU time, so the ratio is what monitoring costs per round trip.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

TRIO_ECHO = str(Path(sys.executable).with_name("trio-echo"))
LOAD = ["--mode", "pingpong", "--conns", "50", "--size", "64"]


def start_server(metrics: bool, core: int | None) -> tuple[subprocess.Popen[str], int, int]:
    """trio-echo pinned to *core*; its process, echo port and metrics port (0 if off)."""
    command = [TRIO_ECHO, "--port", "0"] + (["--metrics", "0"] if metrics else [])
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=run.pinned(core),
    )
    assert proc.stderr is not None
    port = metrics_port = 0
    deadline = time.monotonic() + 30
    while not port:
        if time.monotonic() > deadline:
            run.end_process(proc)
            raise run.BenchError("trio-echo did not start in 30 s")
        line = proc.stderr.readline()
        if not line:
            raise run.BenchError(f"trio-echo exited with status {proc.wait()}")
        if found := re.search(r"metrics on http://\S+:(\d+)/", line):
            metrics_port = int(found[1])
        if found := re.search(r"listening on \S+:(\d+)", line):
            port = int(found[1])
    # Keep reading the log (a full pipe would block the server); nothing per round trip.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, port, metrics_port


def scrape_until(port: int, interval: float, stop: threading.Event, counts: list[int]) -> None:
    """GET /metrics every *interval* seconds until *stop* (bounded by the trial's length)."""
    while not stop.wait(interval):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read()
        assert b"trio_echo_rounds_total" in body
        counts[0] += 1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_cost(opts: argparse.Namespace, scrapes: int = 300) -> float:
    """Server CPU seconds per scrape, from back-to-back scrapes of an idle server
    (no load: less noise than a difference of two loaded runs)."""
    proc, _, metrics_port = start_server(True, opts.cores[0])
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        urllib.request.urlopen(url, timeout=5).read()  # first-use imports, not counted
        before = cpu_seconds(proc.pid)
        for _ in range(scrapes):
            with urllib.request.urlopen(url, timeout=5) as answer:
                answer.read()
        return (cpu_seconds(proc.pid) - before) / scrapes
    finally:
        run.end_process(proc)


def trial(metrics: bool, opts: argparse.Namespace) -> dict[str, Any]:
    core, load_core = opts.cores
    proc, port, metrics_port = start_server(metrics, core)
    stop = threading.Event()
    scrapes = [0]
    scraper = None
    try:
        if metrics:
            scraper = threading.Thread(
                target=scrape_until, args=(metrics_port, opts.scrape_interval, stop, scrapes)
            )
            scraper.start()
        args = [*LOAD, "--port", str(port), "--server-pid", str(proc.pid)]
        args += ["--warmup", str(opts.warmup), "--duration", str(opts.duration)]
        args += ["--max-rounds", str(run.MAX_ROUNDS)]
        raw = run.run_loadgen(opts.loadgen, args, load_core, opts.warmup + opts.duration + 60)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join(10)
        run.end_process(proc)
    return {**raw, **run.derive(raw), "scrapes": scrapes[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=7, help="trials per side (default 7)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per trial")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured s per trial")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument(
        "--cost-scrapes", type=int, default=300, help="back-to-back scrapes to time (300)"
    )
    parser.add_argument("--loadgen", choices=("auto", "c", "python"), default="auto")
    opts = parser.parse_args()
    if not 1 <= opts.trials <= 50 or not 0 < opts.duration <= 60:
        parser.error("keep it bounded: 1-50 trials of at most 60 s")
    if not 1 <= opts.cost_scrapes <= 10_000:
        parser.error("keep it bounded: 1-10000 scrapes to time")
    opts.loadgen, kind = run.loadgen_command(opts.loadgen)
    opts.cores = run.pick_cores()
    if opts.cores[1] is not None:
        # The scraper shares the load generator's core, not the server's.
        os.sched_setaffinity(0, {opts.cores[1]})
    print(f"load generator: {kind}; server core {opts.cores[0]}, load core {opts.cores[1]}")
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for number in range(1, opts.trials + 1):
        for side in ("off", "on") if number % 2 else ("on", "off"):
            figures = trial(side == "on", opts)
            results[side].append(figures)
            print(
                f"trial {number} metrics {side:3}: {figures['cpu_us_per_rt']:6.2f} CPU µs/rt, "
                f"{figures['rt_per_s']:9,.0f} rt/s, server busy {figures['server_busy']:.0%}, "
                f"load busy {figures['loadgen_busy']:.0%}, scrapes {figures['scrapes']}",
                flush=True,
            )
    off = statistics.median(f["cpu_us_per_rt"] for f in results["off"])
    on = statistics.median(f["cpu_us_per_rt"] for f in results["on"])
    rate_off = statistics.median(f["rt_per_s"] for f in results["off"])
    rate_on = statistics.median(f["rt_per_s"] for f in results["on"])
    print()
    print("| metrics | CPU µs per round trip (median) | round trips/s (median) |")
    print("|---|---|---|")
    print(f"| off | {off:.2f} | {rate_off:,.0f} |")
    print(f"| on, scraped every {opts.scrape_interval:g} s | {on:.2f} | {rate_on:,.0f} |")
    print(f"| ratio on/off | {on / off:.3f} | {rate_on / rate_off:.3f} |")
    per_scrape = scrape_cost(opts, opts.cost_scrapes)
    # At the off side's median rate, one second of serving costs off * rate_off µs of CPU.
    share = per_scrape * 1e6 / opts.scrape_interval / (off * rate_off)
    print()
    print(
        f"one scrape costs the server {per_scrape * 1e3:.2f} ms of CPU "
        f"({opts.cost_scrapes} back-to-back "
        f"scrapes, idle server): every {opts.scrape_interval:g} s at {rate_off:,.0f} rt/s "
        f"that is {share:.2%} of its CPU per round trip"
    )


if __name__ == "__main__":
    main()
