"""What a person reads: the summary, ping lines and the live progress line (no I/O)."""

from __future__ import annotations

from .result import BenchResult, LatencySummary

__all__ = ["PROGRESS_CLEAR", "ping_line", "progress_line", "summary"]

#: Back to the start of the line and erase it (the live line is redrawn in place).
PROGRESS_CLEAR = "\r\x1b[K"

_MODES = {
    "closed": "closed loop",
    "open": "open loop",
    "ping": "ping",
    "connect": "connect only",
}


def ping_line(sequence: int, size: int, latency_ns: int) -> str:
    """One round trip, as ping prints it: ``seq=1 bytes=64 time=0.213 ms``."""
    return f"seq={sequence} bytes={size} time={latency_ns / 1e6:.3f} ms"


def progress_line(elapsed: float, round_trips: int, rate: float, p99_ns: int) -> str:
    """The live line: elapsed time, round trips, and the round trips/s and p99
    since the previous line."""
    return (
        f"{PROGRESS_CLEAR}{elapsed:7.1f} s  {round_trips:>12,} round trips  "
        f"{rate:>12,.0f}/s  p99 {p99_ns / 1e6:.3f} ms"
    )


def _latencies(summary: LatencySummary) -> str:
    return (
        f"min {summary.min / 1000:.3f}  p50 {summary.p50 / 1000:.3f}  "
        f"p90 {summary.p90 / 1000:.3f}  p99 {summary.p99 / 1000:.3f}  "
        f"p99.9 {summary.p999 / 1000:.3f}  max {summary.max / 1000:.3f} ms"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def summary(result: BenchResult) -> str:
    """The human summary of *result*, several lines, no trailing newline."""
    udp = result.udp
    mode = _MODES[result.mode] if udp is None else f"UDP {_MODES[result.mode]}"
    lines = [
        f"--- {result.address} trio-echo bench: {mode}, "
        f"{_plural(result.connections, 'connection' if udp is None else 'flow')}, "
        f"{result.size}-byte {'messages' if udp is None else 'datagrams'}, "
        f"{result.seconds:.2f} s measured ---"
    ]
    if result.mode == "connect":
        lines.append(f"connections  {result.connects:,} ({result.rate:,.1f}/s)")
    else:
        mib = result.bytes / result.seconds / (1 << 20) if result.seconds else 0.0
        lines.append(
            f"round trips  {result.round_trips:,} ({result.rate:,.1f}/s), {mib:,.2f} MiB/s, "
            f"{result.bytes:,} bytes echoed and verified"
        )
        lines.append(f"latency      {_latencies(result.latency)}")
    if udp is not None:
        loss = udp.lost / udp.sent * 100 if udp.sent else 0.0
        lines.append(
            f"datagrams    {udp.sent:,} sent, {udp.lost:,} lost ({loss:.2f} %, "
            f"{udp.late:,} late), {udp.duplicates:,} duplicated, {udp.reordered:,} reordered"
        )
    lines.append(f"connect      {_latencies(result.connect)}, {result.connects:,} made")
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(result.errors.items()))
    lines.append(f"errors       {errors or 'none'}")
    return "\n".join(lines)
