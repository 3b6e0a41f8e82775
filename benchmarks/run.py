"""Benchmark trio-echo side by side with the echo servers a user would otherwise pick.

Usage::

    python benchmarks/run.py                 # everything, 2 repeats, table + JSON + chart
    python benchmarks/run.py --smoke         # tiny load, a few seconds (CI)
    python benchmarks/run.py --servers trio-echo,asyncio-streams --scenarios pingpong-1k
    python benchmarks/run.py --servers trio-echo --baseline main   # before/after A/B

Each server (``servers.py``) runs in its own subprocess pinned to one core; the
load generator (``loadgen.c``, compiled here with gcc into a cache directory;
``pyloadgen.py`` when there is no compiler) runs pinned to another core.  The
server's CPU time is read from ``/proc/PID/stat`` by the load generator itself
at the two edges of the measured window (after the warm-up), so CPU per round
trip covers exactly the round trips counted.  Memory per idle connection is the
server's RSS delta over N held connections, each on a fresh server.  Every
scenario is repeated ``--repeat`` times, servers interleaved, and the table
shows medians.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS_PY = HERE / "servers.py"
LOADGEN_C = HERE / "loadgen.c"
PYLOADGEN = HERE / "pyloadgen.py"
BASELINE = "asyncio-streams"
ALL_SERVERS = (
    "trio-echo",
    "asyncio-streams",
    "asyncio-protocol",
    "uvloop-streams",
    "uvloop-protocol",
    "threads",
    "trio-serve-tcp",
)
# Scenario name -> (server framing, load generator arguments).
PINGPONG = {
    "pingpong-1k": ("raw", ["--mode", "pingpong", "--conns", "50", "--size", "1024"]),
    "pingpong-64": ("raw", ["--mode", "pingpong", "--conns", "50", "--size", "64"]),
    "line-64": ("line", ["--mode", "pingpong", "--conns", "50", "--size", "64", "--line"]),
}
STREAM = {"stream": ("raw", ["--mode", "stream", "--conns", "10"])}
SCENARIOS = (*PINGPONG, *STREAM, "idle")
# A process whose CPU time is this share of the window's wall time was the
# bottleneck; for the load generator that makes the figures suspect.
SATURATED = 0.90
MAX_ROUNDS = 10_000_000


# --baseline: git revision -> the directory its tree was exported to.
BASELINES: dict[str, Path] = {}


def export_baseline(ref: str, into: Path) -> Path:
    """Export the tree of git revision *ref* into *into*; return the directory."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"--baseline {ref}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    BASELINES[ref] = into
    return into


class BenchError(Exception):
    """A server or the load generator misbehaved; the message says which and how."""


# -- the machine ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "trio": version("trio"),
        "trio_echo": version("trio-echo"),
        "uvloop": version("uvloop"),
    }


def pick_cores() -> tuple[int | None, int | None]:
    """(server core, load core): two different cores when there are two."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return cores[0], cores[1]


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            needed = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def loadgen_command(kind: str) -> tuple[list[str], str]:
    """The load generator to run: the compiled C one if possible, else Python."""
    if kind in ("auto", "c"):
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is not None:
            source = LOADGEN_C.read_bytes()
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            binary = (
                cache / "trio-echo-bench" / f"loadgen-{hashlib.sha256(source).hexdigest()[:16]}"
            )
            if not binary.exists():
                binary.parent.mkdir(parents=True, exist_ok=True)
                tmp = binary.with_suffix(f".{os.getpid()}.tmp")
                compiled = subprocess.run(
                    [gcc, "-O2", "-o", str(tmp), str(LOADGEN_C)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if compiled.returncode == 0:
                    tmp.replace(binary)
                elif kind == "c":
                    raise BenchError(f"gcc failed:\n{compiled.stderr}")
            if binary.exists():
                return [str(binary)], "c"
        elif kind == "c":
            raise BenchError("--loadgen c needs gcc")
    return [sys.executable, str(PYLOADGEN)], "python"


# -- processes ------------------------------------------------------------------------


def pinned(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """One line from *proc*'s stdout within *timeout* seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        status = proc.poll()
        ended = "no output" if status is None else f"exited with status {status}"
        raise BenchError(f"{what}: {ended} (waited up to {timeout} s)")
    return line


def end_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 5 s: always by this child's own PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def server(name: str, framing: str, core: int | None, max_conns: int) -> Iterator[Any]:
    kind, _, ref = name.partition("@")
    cmd = [sys.executable, str(SERVERS_PY), kind, "--framing", framing]
    cmd += ["--max-connections", str(max_conns)]
    env = None
    if ref:
        # trio_echo from that revision shadows the installed one.
        env = {**os.environ, "PYTHONPATH": str(BASELINES[ref])}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(core), cwd=ROOT, env=env
    )
    try:
        line = read_line(proc, 30, f"server {name}")
        if not line.startswith("PORT "):
            raise BenchError(f"server {name} printed {line!r}")
        proc.port = int(line.split()[1])  # type: ignore[attr-defined]
        yield proc
        if proc.poll() is not None:
            raise BenchError(f"server {name} died (exit status {proc.returncode})")
    finally:
        end_process(proc)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")


def settled_rss(pid: int) -> int:
    """The RSS once it stops changing (the server may still be finishing work)."""
    last = rss_kib(pid)
    for _ in range(20):
        time.sleep(0.1)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def run_loadgen(cmd: list[str], args: list[str], core: int | None, timeout: float) -> Any:
    done = subprocess.run(
        cmd + args, capture_output=True, text=True, timeout=timeout, preexec_fn=pinned(core)
    )
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"load generator: {done.stdout!r} {done.stderr!r}") from None
    if "error" in result or done.returncode != 0:
        raise BenchError(f"load generator: {result.get('error', done.returncode)}")
    return result


def hold_idle(cmd: list[str], port: int, conns: int, core: int | None, pid: int) -> int:
    """Open *conns* idle connections to *port*; the server's RSS while they are held."""
    proc = subprocess.Popen(
        [*cmd, "--mode", "idle", "--port", str(port), "--conns", str(conns), "--duration", "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(core),
    )
    try:
        held = json.loads(read_line(proc, 90, "idle load generator"))
        if held.get("held") != conns:
            raise BenchError(f"idle load generator: {held}")
        return settled_rss(pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- one server, every scenario ---------------------------------------------------------


def derive(result: dict[str, Any]) -> dict[str, Any]:
    window = result["measure_s"]
    out: dict[str, Any] = {
        "server_busy": result["server_cpu_s"] / window,
        "loadgen_busy": result["client_cpu_s"] / window,
        "server_wait": result["server_wait_s"] / window,
        "loadgen_wait": result["client_wait_s"] / window,
    }
    if result["mode"] == "pingpong":
        out["rt_per_s"] = result["round_trips"] / window
        out["cpu_us_per_rt"] = result["server_cpu_s"] * 1e6 / result["round_trips"]
        out["p50_us"] = result["p50_us"]
        out["p99_us"] = result["p99_us"]
    else:
        out["mb_per_s"] = result["bytes"] / window / 1e6
        # Robust to a contended machine: what one second of the server's CPU moves.
        out["mb_per_cpu_s"] = result["bytes"] / max(result["server_cpu_s"], 1e-3) / 1e6
    out["loadgen_saturated"] = out["loadgen_busy"] >= SATURATED
    out["server_saturated"] = out["server_busy"] >= SATURATED
    return out


def bench_server(
    name: str, opts: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every selected scenario against *name*; {scenario: figures}."""
    core, load_core = opts.cores
    timing = ["--warmup", str(opts.warmup), "--duration", str(opts.duration)]
    timing += ["--max-rounds", str(MAX_ROUNDS)]
    timeout = opts.warmup + opts.duration + 60
    results: dict[str, Any] = {}
    wanted = {**PINGPONG, **STREAM}
    for framing in ("raw", "line"):
        chosen = [s for s in opts.scenarios if s in wanted and wanted[s][0] == framing]
        if not chosen:
            continue
        with server(name, framing, core, 1000) as proc:
            if opts.server_warmup > 0:
                # A fresh asyncio server spends its first seconds at several times its
                # steady cost per round trip: load every server alike, unmeasured, first.
                args = [*wanted[chosen[0]][1], "--port", str(proc.port), "--warmup", "0"]
                args += ["--duration", str(opts.server_warmup), "--max-rounds", str(MAX_ROUNDS)]
                run_loadgen(opts.loadgen, args, load_core, timeout + opts.server_warmup)
            for scenario in chosen:
                args = [
                    *wanted[scenario][1],
                    "--port",
                    str(proc.port),
                    "--server-pid",
                    str(proc.pid),
                ]
                best: dict[str, Any] | None = None
                for attempt in range(1, opts.attempts + 1):
                    raw = run_loadgen(opts.loadgen, args + timing, load_core, timeout)
                    figs = {**raw, **derive(raw), "attempt": attempt}
                    log(f"  {name:17} {scenario:12} {summary_line(figs)}")
                    if best is None or contention(figs) < contention(best):
                        best = figs
                    if contention(figs) <= opts.max_wait:
                        break
                results[scenario] = best
    if "idle" in opts.scenarios:
        for conns in opts.idle_conns:
            with server(name, "raw", core, conns + 100) as proc:
                # Warm up first, so one-time allocations are not charged to connections.
                hold_idle(opts.loadgen, proc.port, 50, load_core, proc.pid)
                before = settled_rss(proc.pid)
                during = hold_idle(opts.loadgen, proc.port, conns, load_core, proc.pid)
            per_conn = (during - before) / conns
            results[f"idle-{conns}"] = {
                "conns": conns,
                "rss_before_kib": before,
                "rss_held_kib": during,
                "kib_per_conn": per_conn,
            }
            log(f"  {name:17} idle-{conns:<7} {per_conn:7.2f} KiB per connection")
    return results


def contention(figs: dict[str, Any]) -> float:
    """The share of the window the server or the load generator lost to other work."""
    return float(max(figs["server_wait"], figs["loadgen_wait"]))


def summary_line(fig: dict[str, Any]) -> str:
    flags = " LOADGEN SATURATED" if fig["loadgen_saturated"] else ""
    load = (
        f"busy/waiting for a CPU: server {fig['server_busy']:4.0%}/{fig['server_wait']:3.0%},"
        f" loadgen {fig['loadgen_busy']:4.0%}/{fig['loadgen_wait']:3.0%}"
    )
    if "rt_per_s" in fig:
        return (
            f"{fig['rt_per_s']:9,.0f} rt/s {fig['cpu_us_per_rt']:6.1f} us/rt "
            f"p50 {fig['p50_us']:6} p99 {fig['p99_us']:6} us  ({load}){flags}"
        )
    return f"{fig['mb_per_s']:9,.0f} MB/s  ({load}){flags}"


# -- the summary ------------------------------------------------------------------------

# (column header, scenario, figure, format)
COLUMNS = (
    ("round trips/s (1 KiB)", "pingpong-1k", "rt_per_s", "{:,.0f}"),
    ("p50 µs", "pingpong-1k", "p50_us", "{:,.0f}"),
    ("p99 µs", "pingpong-1k", "p99_us", "{:,.0f}"),
    ("CPU µs/rt 1 KiB", "pingpong-1k", "cpu_us_per_rt", "{:.1f}"),
    ("CPU µs/rt 64 B", "pingpong-64", "cpu_us_per_rt", "{:.1f}"),
    ("CPU µs/rt line 64 B", "line-64", "cpu_us_per_rt", "{:.1f}"),
    ("stream MB/s", "stream", "mb_per_s", "{:,.0f}"),
    ("stream MB per server CPU-s", "stream", "mb_per_cpu_s", "{:,.0f}"),
)
RATIOS = (
    ("CPU/rt 1 KiB", "pingpong-1k", "cpu_us_per_rt"),
    ("CPU/rt 64 B", "pingpong-64", "cpu_us_per_rt"),
    ("CPU/rt line 64 B", "line-64", "cpu_us_per_rt"),
    ("stream MB/s", "stream", "mb_per_s"),
    ("stream MB/CPU-s", "stream", "mb_per_cpu_s"),
    ("p99", "pingpong-1k", "p99_us"),
)


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """{server: {scenario: {figure: median over the repeats}}}."""
    out: dict[str, Any] = {}
    for run in runs:
        for srv, scenarios in run.items():
            for scenario, figs in scenarios.items():
                for fig, value in figs.items():
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        continue
                    out.setdefault(srv, {}).setdefault(scenario, {}).setdefault(fig, [])
                    out[srv][scenario][fig].append(value)
    return {
        srv: {sc: {f: statistics.median(v) for f, v in figs.items()} for sc, figs in scs.items()}
        for srv, scs in out.items()
    }


def fig(summary: dict[str, Any], srv: str, scenario: str, name: str) -> float | None:
    value = summary.get(srv, {}).get(scenario, {}).get(name)
    return None if value is None else float(value)


def columns(idle_conns: list[int]) -> list[tuple[str, str, str, str]]:
    idle = [(f"KiB/idle conn ({n:,})", f"idle-{n}", "kib_per_conn", "{:.2f}") for n in idle_conns]
    return [*COLUMNS, *idle]


def ratio_columns(idle_conns: list[int]) -> list[tuple[str, str, str]]:
    idle = [(f"KiB/conn {n:,}", f"idle-{n}", "kib_per_conn") for n in idle_conns]
    return [*RATIOS[:5], *idle, RATIOS[5]]


def markdown(summary: dict[str, Any], servers: list[str], idle_conns: list[int]) -> str:
    cols = columns(idle_conns)
    lines = ["| server | " + " | ".join(c[0] for c in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for srv in servers:
        cells = []
        for _, scenario, name, form in cols:
            value = fig(summary, srv, scenario, name)
            cells.append("—" if value is None else form.format(value))
        lines.append(f"| {srv} | " + " | ".join(cells) + " |")
    rcols = ratio_columns(idle_conns)
    lines += ["", f"Ratios against {BASELINE} (lower is better except stream):", ""]
    lines.append("| server | " + " | ".join(c[0] for c in rcols) + " |")
    lines.append("|---" * (len(rcols) + 1) + "|")
    for srv in servers:
        cells = []
        for _, scenario, name in rcols:
            value, base = fig(summary, srv, scenario, name), fig(summary, BASELINE, scenario, name)
            cells.append("—" if value is None or not base else f"{value / base:.2f}x")
        lines.append(f"| {srv} | " + " | ".join(cells) + " |")
    for before in (srv for srv in servers if srv.startswith("trio-echo@")):
        # The before/after A/B of --baseline: today's trio-echo over that revision's.
        cells = []
        for title, scenario, name in rcols:
            value, base = (
                fig(summary, "trio-echo", scenario, name),
                fig(summary, before, scenario, name),
            )
            if value is not None and base:
                cells.append(f"{title} {value / base:.3f}x")
        lines += ["", f"trio-echo over {before}: " + ", ".join(cells)]
    line, raw1k = fig(summary, "trio-echo", "line-64", "cpu_us_per_rt"), None
    raw1k = fig(summary, "trio-echo", "pingpong-1k", "cpu_us_per_rt")
    raw64 = fig(summary, "trio-echo", "pingpong-64", "cpu_us_per_rt")
    if line and (raw1k or raw64):
        parts = [
            f"{line / r:.2f}x its raw {n}" for r, n in ((raw1k, "1 KiB"), (raw64, "64 B")) if r
        ]
        lines += [
            "",
            "trio-echo line framing (64-byte lines), CPU per round trip: " + ", ".join(parts),
        ]
    return "\n".join(lines)


def chart(summary: dict[str, Any], servers: list[str], idle_conns: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "server CPU µs per round trip (50 conns; lower is better)",
            [("1 KiB raw", "pingpong-1k"), ("64 B raw", "pingpong-64"), ("64 B lines", "line-64")],
            "cpu_us_per_rt",
        ),
        ("stream MB/s (10 conns; higher is better)", [("stream", "stream")], "mb_per_s"),
        (
            "KiB per idle connection (lower is better)",
            [(f"{n:,} held", f"idle-{n}") for n in idle_conns],
            "kib_per_conn",
        ),
        ("p99 latency µs (50 conns, 1 KiB; lower is better)", [("p99", "pingpong-1k")], "p99_us"),
    ]
    fig_, axes = plt.subplots(2, 2, figsize=(13, 8))
    order = list(reversed(servers))
    for ax, (title, series, name) in zip(axes.flat, panels, strict=True):
        height = 0.8 / len(series)
        for i, (label, scenario) in enumerate(series):
            values = [fig(summary, s, scenario, name) or 0.0 for s in order]
            ys = [y + i * height for y in range(len(order))]
            bars = ax.barh(ys, values, height=height, label=label)
            colors = ["tab:red" if s == "trio-echo" else None for s in order]
            for bar, color in zip(bars, colors, strict=True):
                if color and len(series) == 1:
                    bar.set_color(color)
            labels = [f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v else "" for v in values]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        ax.set_yticks([y + height * (len(series) - 1) / 2 for y in range(len(order))], order)
        ax.set_title(title, fontsize=10)
        if len(series) > 1:
            ax.legend(fontsize=8, loc="best")
        ax.margins(x=0.15)
    fig_.suptitle("trio-echo and its peers, one server per core (medians)", fontsize=12)
    fig_.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig_.savefig(path, dpi=90)
    plt.close(fig_)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny load, a few seconds, no chart")
    parser.add_argument("--servers", help="comma-separated, default: every available one")
    parser.add_argument("--scenarios", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=2, help="runs per scenario; medians shown")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds")
    parser.add_argument(
        "--attempts",
        type=int,
        default=2,
        help="tries per scenario while other work takes more than --max-wait (best kept)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=0.10,
        help="share of the window the server or load generator may wait for a CPU",
    )
    parser.add_argument(
        "--server-warmup",
        type=float,
        default=3.0,
        help="seconds of unmeasured load on each fresh server before its first scenario",
    )
    parser.add_argument("--idle-conns", default="5000,10000", help="comma-separated counts")
    parser.add_argument("--loadgen", choices=("auto", "c", "python"), default="auto")
    parser.add_argument("--output", type=Path, help="JSON results (default: benchmarks/results/)")
    parser.add_argument("--chart", type=Path, help="PNG chart (default: next to the JSON)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also write benchmarks/latest.json and docs/benchmark.png (what the README shows)",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="measure nothing: take the medians over the runs in these result files",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run trio-echo from this git revision (trio-echo@REF), for a before/after A/B",
    )
    opts = parser.parse_args(argv)
    opts.servers_given = opts.servers is not None
    if opts.smoke:
        opts.repeat, opts.attempts, opts.warmup, opts.duration = 1, 1, 0.2, 0.4
        opts.server_warmup = 0.0
        if opts.idle_conns == parser.get_default("idle_conns"):
            opts.idle_conns = "200"
    available = [s for s in ALL_SERVERS if "uvloop" not in s or importlib.util.find_spec("uvloop")]
    opts.servers = opts.servers.split(",") if opts.servers else available
    for name in opts.servers:
        if name not in ALL_SERVERS:
            parser.error(f"unknown server {name!r}; choose from {', '.join(ALL_SERVERS)}")
        if name not in available:
            parser.error(f"server {name!r} needs uvloop (pip install -e '.[bench]')")
    if opts.baseline:
        if "trio-echo" not in opts.servers:
            parser.error("--baseline compares trio-echo: include it in --servers")
        at = opts.servers.index("trio-echo") + 1
        opts.servers.insert(at, f"trio-echo@{opts.baseline}")
    opts.scenarios = opts.scenarios.split(",") if opts.scenarios else list(SCENARIOS)
    for name in opts.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    try:
        opts.idle_conns = [int(n) for n in opts.idle_conns.split(",")]
    except ValueError:
        parser.error(f"--idle-conns: not a list of counts: {opts.idle_conns!r}")
    if opts.repeat < 1 or opts.attempts < 1 or opts.duration <= 0 or opts.warmup < 0:
        parser.error("--repeat and --attempts must be >= 1, --duration > 0, --warmup >= 0")
    return opts


def measure(
    opts: argparse.Namespace, log: Callable[[str], None]
) -> tuple[Any, list[str], list[Any]]:
    """Run every selected server and scenario ``--repeat`` times: (machine, notes, runs)."""
    raise_fd_limit(max(opts.idle_conns) + 1024)
    opts.loadgen, kind = loadgen_command(opts.loadgen)
    opts.cores = pick_cores()
    info = machine()
    notes = [f"load generator: {kind}"]
    if opts.cores == (None, None):
        notes.append("one core only: server and load generator are not pinned")
    else:
        notes.append(f"server on core {opts.cores[0]}, load generator on core {opts.cores[1]}")
    if opts.baseline:
        where = export_baseline(opts.baseline, HERE / "results" / f"baseline-{os.getpid()}")
        notes.append(f"trio-echo@{opts.baseline}: that revision, exported to {where}")
    log(f"{info}; " + "; ".join(notes))
    runs: list[dict[str, Any]] = []
    for repeat in range(opts.repeat):
        log(f"run {repeat + 1} of {opts.repeat}")
        runs.append({name: bench_server(name, opts, log) for name in opts.servers})
    return info, notes, runs


def combine(opts: argparse.Namespace) -> tuple[Any, list[str], list[Any]]:
    """The runs of earlier result files, to take medians over all of them."""
    docs = [json.loads(Path(path).read_text()) for path in opts.combine]
    runs = [run for doc in docs for run in doc["runs"]]
    for run in runs:  # figures added since the file was written
        for scenarios in run.values():
            for figs in scenarios.values():
                if "mode" in figs and "measure_s" in figs:
                    figs.update(derive(figs))
    servers = [s for s in ALL_SERVERS if any(s in run for run in runs)]
    servers += sorted({s for run in runs for s in run if "@" in s})
    opts.servers = [s for s in opts.servers if s in servers] if opts.servers_given else servers
    opts.idle_conns = docs[0]["settings"]["idle_conns"]
    opts.repeat = len(runs)
    settings = docs[0]["settings"]
    opts.scenarios = settings["scenarios"]
    opts.warmup, opts.duration = settings["warmup_s"], settings["duration_s"]
    opts.attempts, opts.max_wait = settings.get("attempts"), settings.get("max_wait")
    opts.server_warmup = settings.get("server_warmup_s")
    notes = [n for n in docs[0]["notes"] if n.startswith(("load generator:", "server on", "one"))]
    notes.append(f"medians over {len(runs)} runs from {', '.join(map(str, opts.combine))}")
    return docs[0]["machine"], notes, runs


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    try:
        info, notes, runs = combine(opts) if opts.combine else measure(opts, log)
    except (BenchError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        return 130
    summary = medians(runs)
    saturated = sorted(
        {
            f"{srv} {sc}"
            for run in runs
            for srv, scs in run.items()
            for sc, figs in scs.items()
            if figs.get("loadgen_saturated")
        }
    )
    if saturated:
        notes.append("load generator saturated (figures are its limit): " + ", ".join(saturated))
    idle = sorted(
        {
            f"{srv} {sc}"
            for run in runs
            for srv, scs in run.items()
            for sc, figs in scs.items()
            if "server_saturated" in figs and not figs["server_saturated"]
        }
    )
    if idle:
        loaded = {
            f"{srv} {sc}"
            for run in runs
            for srv, scs in run.items()
            for sc, figs in scs.items()
            if "server_saturated" in figs
        }
        which = "in every scenario" if set(idle) == loaded else ""
        notes.append(
            f"server below {SATURATED:.0%} busy {which or 'in: ' + ', '.join(idle)} (other work"
            " on the machine or the load generator was the limit; CPU per round trip then"
            " includes idle wake-ups)"
        )
    waits = [
        figs["server_wait"]
        for run in runs
        for scs in run.values()
        for figs in scs.values()
        if figs.get("server_wait", -1) >= 0
    ]
    if waits:
        notes.append(
            f"the server waited for a CPU {statistics.median(waits):.0%} of the measured time"
            " (median over scenarios; other work on its core)"
        )
    table = markdown(summary, opts.servers, opts.idle_conns)
    print(table)
    print("\n" + "\n".join(notes))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    document = {
        "machine": info,
        "settings": {
            "repeat": opts.repeat,
            "attempts": opts.attempts,
            "max_wait": opts.max_wait,
            "warmup_s": opts.warmup,
            "server_warmup_s": getattr(opts, "server_warmup", None),
            "duration_s": opts.duration,
            "servers": opts.servers,
            "scenarios": opts.scenarios,
            "idle_conns": opts.idle_conns,
            "smoke": opts.smoke,
        },
        "notes": notes,
        "medians": summary,
        "table": table,
        "runs": runs,
    }
    output = opts.output or HERE / "results" / f"{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=1) + "\n")
    log(f"results: {output}")
    if not opts.smoke:
        charts = [opts.chart or output.with_suffix(".png")]
        if opts.publish:
            (HERE / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
            charts.append(ROOT / "docs" / "benchmark.png")
        if importlib.util.find_spec("matplotlib"):
            for path in charts:
                chart(summary, opts.servers, opts.idle_conns, path)
                log(f"chart: {path}")
        else:
            log("no chart: matplotlib is not installed (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
