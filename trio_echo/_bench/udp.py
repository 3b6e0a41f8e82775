"""``trio-echo bench --udp``: datagrams in flight per flow; latency, loss, duplicates, reordering.

Each flow is one UDP socket connected to the server, keeping ``--pipeline``
datagrams in flight (a closed loop).  A datagram carries its flow's sequence
number and a fixed pattern, so every echo is checked byte for byte.  An echo
whose number is still outstanding is counted (and timed) once; one that
arrives after a higher number is also *reordered*; one already answered is a
*duplicate*; a datagram without an echo within ``--timeout`` is *lost* (and
*late* if its echo comes after all).  The run stops after ``--count`` echoes,
``--duration`` or Ctrl-C, then waits up to ``--timeout`` for the echoes still
outstanding.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import time
from collections import deque
from typing import Any, Final

import attrs
import trio

from .address import TCPAddress
from .histogram import Histogram
from .result import LatencySummary

__all__ = ["HEADER_SIZE", "UDPResult", "udp_bench", "udp_summary"]

# Sequence number and flow number, then the pattern.
_HEADER: Final = struct.Struct("!QI")
HEADER_SIZE: Final = _HEADER.size
_PATTERN: Final = 0xA5

# Sequence numbers declared lost that a late echo is still recognised for.
_LATE_MEMORY: Final = 65536


@attrs.frozen(kw_only=True)
class UDPResult:
    """What a UDP run measured (counts over every flow)."""

    address: str
    flows: int
    size: int
    seconds: float
    sent: int
    echoed: int
    """Datagrams echoed (first copies, each timed)."""
    lost: int
    """Datagrams with no echo within the timeout (late ones included)."""
    late: int
    """Of the lost, those whose echo came after the timeout."""
    duplicates: int
    reordered: int
    corrupted: int
    """Echoes that differ from what was sent (or come from nowhere)."""
    latency: LatencySummary

    @property
    def ok(self) -> bool:
        """At least one echo, and none corrupted."""
        return self.echoed > 0 and self.corrupted == 0

    def to_json(self) -> dict[str, Any]:
        return {"mode": "udp", **attrs.asdict(self)}


class _Flow:
    def __init__(self, number: int, size: int) -> None:
        self.number = number
        self.size = size
        self.next = 1
        self.outstanding: dict[int, int] = {}
        self.expired: deque[int] = deque(maxlen=_LATE_MEMORY)
        self.highest = 0

    def datagram(self, sequence: int) -> bytes:
        header = _HEADER.pack(sequence, self.number)
        return header + bytes([_PATTERN]) * (self.size - HEADER_SIZE)


class _Totals:
    def __init__(self) -> None:
        self.sent = self.echoed = self.lost = self.late = 0
        self.duplicates = self.reordered = self.corrupted = 0
        self.histogram = Histogram()


async def udp_bench(
    address: TCPAddress,
    *,
    flows: int,
    window: int,
    size: int,
    count: int | None,
    duration: float | None,
    timeout: float,  # noqa: ASYNC109 -- a per-datagram deadline, not the call's
    stop: trio.Event,
) -> UDPResult:
    """Run the UDP closed loop against *address* (see the module docstring).

    Raises:
      OSError: the address does not resolve, or a socket cannot be made.
    """
    infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    totals = _Totals()
    start = time.monotonic()
    deadline = math.inf if duration is None else start + duration

    def finished() -> bool:
        return (
            stop.is_set()
            or time.monotonic() >= deadline
            or (count is not None and totals.echoed >= count)
        )

    async def run_flow(number: int) -> None:
        flow = _Flow(number, size)
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            await sock.connect(sockaddr)
            for _ in range(window):
                await _send(sock, flow, totals)
            drain_until = math.inf
            while flow.outstanding or not finished():
                if finished() and drain_until == math.inf:
                    drain_until = time.monotonic() + timeout
                now = time.monotonic()
                oldest = min(flow.outstanding.values(), default=0) / 1e9
                wake = min(oldest + timeout if flow.outstanding else now + timeout, drain_until)
                with trio.move_on_after(max(0.0, wake - now)):
                    data = await sock.recv(size + 1)
                    if _received(data, flow, totals) and not finished():
                        await _send(sock, flow, totals)
                    continue
                lost = _expire(flow, totals, time.monotonic_ns() - int(timeout * 1e9))
                if time.monotonic() >= drain_until:
                    totals.lost += len(flow.outstanding)
                    flow.outstanding.clear()
                    return
                for _ in range(lost if not finished() else 0):
                    await _send(sock, flow, totals)

    async with trio.open_nursery() as nursery:
        for number in range(flows):
            nursery.start_soon(run_flow, number)
    seconds = time.monotonic() - start
    return UDPResult(
        address=str(address),
        flows=flows,
        size=size,
        seconds=round(seconds, 3),
        sent=totals.sent,
        echoed=totals.echoed,
        lost=totals.lost,
        late=totals.late,
        duplicates=totals.duplicates,
        reordered=totals.reordered,
        corrupted=totals.corrupted,
        latency=LatencySummary.of(totals.histogram),
    )


async def _send(sock: trio.socket.SocketType, flow: _Flow, totals: _Totals) -> None:
    sequence = flow.next
    flow.next += 1
    flow.outstanding[sequence] = time.monotonic_ns()
    totals.sent += 1
    # An ICMP error from an earlier datagram: this one still went, or is lost.
    with contextlib.suppress(ConnectionRefusedError):
        await sock.send(flow.datagram(sequence))


def _received(data: bytes, flow: _Flow, totals: _Totals) -> bool:
    """Count one echo; whether it was the first echo of an outstanding datagram."""
    if len(data) != flow.size:
        totals.corrupted += 1
        return False
    sequence, number = _HEADER.unpack_from(data)
    if number != flow.number or data != flow.datagram(sequence):
        totals.corrupted += 1
        return False
    sent = flow.outstanding.pop(sequence, None)
    if sent is None:
        if sequence in flow.expired:
            flow.expired.remove(sequence)
            totals.late += 1
        else:
            totals.duplicates += 1
        return False
    totals.histogram.record(time.monotonic_ns() - sent)
    totals.echoed += 1
    if sequence < flow.highest:
        totals.reordered += 1
    flow.highest = max(flow.highest, sequence)
    return True


def _expire(flow: _Flow, totals: _Totals, before_ns: int) -> int:
    """Declare lost every datagram sent before *before_ns*; how many that was."""
    expired = [sequence for sequence, sent in flow.outstanding.items() if sent <= before_ns]
    for sequence in expired:
        del flow.outstanding[sequence]
        flow.expired.append(sequence)
    totals.lost += len(expired)
    return len(expired)


def udp_summary(result: UDPResult) -> str:
    """The human-readable summary of a UDP run."""
    rate = result.echoed / result.seconds if result.seconds else 0.0
    lat = result.latency
    loss = result.lost / result.sent * 100 if result.sent else 0.0
    return "\n".join(
        [
            f"--- {result.address} trio-echo bench: UDP, {result.flows} flow(s), "
            f"{result.size}-byte datagrams, {result.seconds:.2f} s ---",
            f"echoes       {result.echoed:,} ({rate:,.1f}/s) of {result.sent:,} sent, "
            "every byte verified",
            f"latency      min {lat.min / 1000:.3f}  p50 {lat.p50 / 1000:.3f}  "
            f"p90 {lat.p90 / 1000:.3f}  p99 {lat.p99 / 1000:.3f}  "
            f"p99.9 {lat.p999 / 1000:.3f}  max {lat.max / 1000:.3f} ms",
            f"loss         {result.lost:,} ({loss:.2f} %; {result.late:,} late)  "
            f"duplicates {result.duplicates:,}  reordered {result.reordered:,}  "
            f"corrupted {result.corrupted:,}",
        ]
    )
