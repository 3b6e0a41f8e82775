"""``trio-echo bench --udp``: flows of datagrams, every echo verified and timed.

Each flow is one UDP socket connected to the server, run in the same modes
as a stream connection: the closed loop keeps ``pipeline`` datagrams in
flight, the open loop sends ``rate`` datagrams per second over all flows
(latency from each one's due time), ping sends one every ``interval``.
A datagram carries its flow's number and its sequence number, then a fixed
pattern, so every echo is checked byte for byte against what was sent.

An echo of a datagram still outstanding is a round trip; one that arrives
after the echo of a later datagram is also *reordered*; one already answered
is a *duplicate*; a datagram without an echo within ``timeout`` is *lost*
(*late* if its echo comes after all), and in the closed loop and ping its
slot goes to the next datagram.  Loss is a measurement, not an error.

Errors: the first echo that differs from every datagram sent stops the run
(``mismatch``, one line naming the flow, the datagram and the byte).  An
ICMP error (port unreachable: "Connection refused") before any echo came
makes the server unreachable; after, it ends that flow, counted by kind
(``refused``).  Cancellation ends every flow at once.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

import trio

from .config import UDP_HEADER_SIZE, BenchConfig
from .connect import Endpoint, error_kind, error_reason
from .loops import Pace, next_send, side_by_side
from .meter import Meter
from .pattern import EchoMismatch, show_byte
from .result import DatagramCounts

__all__ = ["UDPUnreachable", "udp_flows"]

# Flow number and sequence number (from 1), then the pattern.
_HEADER: Final = struct.Struct("!IQ")
assert _HEADER.size == UDP_HEADER_SIZE
_PATTERN: Final = 0xA5
# Sequence numbers declared lost that a late echo is still recognised for.
LATE_MEMORY: Final = 65536


class UDPUnreachable(Exception):
    """An ICMP error came back before any echo did (one line: the reason)."""


class _Counts:
    """:class:`~.result.DatagramCounts` as the flows build them."""

    def __init__(self) -> None:
        self.sent = self.lost = self.late = self.duplicates = self.reordered = 0
        #: Echoes of outstanding datagrams, measured or not (reachability).
        self.echoed = 0

    def frozen(self) -> DatagramCounts:
        return DatagramCounts(
            sent=self.sent,
            lost=self.lost,
            late=self.late,
            duplicates=self.duplicates,
            reordered=self.reordered,
        )


class Flow:
    """One flow's datagrams: what was sent, what is outstanding (sans-IO)."""

    def __init__(self, number: int, size: int) -> None:
        self.number = number
        self.size = size
        self._filler = bytes([_PATTERN]) * (size - UDP_HEADER_SIZE)
        #: The next sequence number to send.
        self.next = 1
        #: Outstanding datagrams, oldest first: sequence number to start time (ns).
        self.outstanding: dict[int, int] = {}
        #: Recently lost datagrams, oldest first (a set with an order, bounded).
        self.expired: dict[int, None] = {}
        self.highest = 0
        #: The first sequence number sent in the measured window (0: none yet).
        self.first_measured = 0

    def datagram(self, sequence: int) -> bytes:
        return _HEADER.pack(self.number, sequence) + self._filler

    def measured(self, sequence: int) -> bool:
        return 0 < self.first_measured <= sequence

    def difference(self, data: bytes) -> str | None:
        """``None`` if *data* is the echo of a datagram this flow sent, else
        the one line that says where it differs."""
        if len(data) != self.size:
            # Echoes are read into size + 1 bytes: a longer one shows as one byte too long.
            length = f"more than {self.size}" if len(data) > self.size else str(len(data))
            return f"flow {self.number}: an echo of {length} bytes; each datagram has {self.size}"
        number, sequence = _HEADER.unpack_from(data)
        known = number == self.number and 0 < sequence < self.next
        if known and data == self.datagram(sequence):
            return None
        # A damaged header: compare with the datagram most likely meant.
        if not known:
            if not self.outstanding and self.next == 1:
                return f"flow {self.number}: an echo before any datagram was sent"
            sequence = next(iter(self.outstanding), self.next - 1)
        expected = self.datagram(sequence)
        index = next(i for i in range(self.size) if expected[i] != data[i])
        return (
            f"flow {self.number}: datagram {sequence}: byte {index}: "
            f"expected {show_byte(expected[index])}, received {show_byte(data[index])}"
        )

    def expire(self, before: int) -> list[int]:
        """Declare lost each datagram started before *before* (ns); return their numbers."""
        lost = [sequence for sequence, start in self.outstanding.items() if start < before]
        for sequence in lost:
            del self.outstanding[sequence]
            self.expired[sequence] = None
            if len(self.expired) > LATE_MEMORY:
                del self.expired[next(iter(self.expired))]
        return lost


async def udp_flows(config: BenchConfig, meter: Meter, endpoint: Endpoint) -> DatagramCounts:
    """Run ``config.connections`` flows against *endpoint* until the run stops
    or its budget is spent, then wait (at most ``timeout``) for the echoes
    outstanding.  Records round trips in *meter*; returns the datagram counts.

    Raises :exc:`UDPUnreachable` (see the module docstring) and :exc:`OSError`
    when a socket cannot be made.
    """
    counts = _Counts()
    family, sockaddr = endpoint
    unreachable: list[str] = []

    async def flow(number: int, run: trio.CancelScope) -> None:
        with socket.socket(family, socket.SOCK_DGRAM) as plain:
            flow_run = _FlowRun(plain, Flow(number, config.size), config, meter, counts)
            started = meter.clock()
            await flow_run.sock.connect(sockaddr)
            meter.connected(meter.clock() - started)
            try:
                await flow_run.run()
            except EchoMismatch as exc:
                meter.error("mismatch", str(exc))
                run.cancel()
            except OSError as exc:
                if not counts.echoed:
                    unreachable.append(error_reason(exc))
                    run.cancel()
                else:
                    meter.error(error_kind(exc), f"flow {number}: {error_reason(exc)}")

    async with trio.open_nursery() as nursery:
        for number in range(config.connections):
            nursery.start_soon(flow, number, nursery.cancel_scope)
    if unreachable:
        raise UDPUnreachable(unreachable[0])
    return counts.frozen()


class _FlowRun:
    """One flow on its socket: sending the next datagram, taking in an echo,
    declaring datagrams lost.  The closed loop runs in one task (an echo or a
    loss frees the slot its replacement goes out in); the paced modes as a
    sender and a receiver (see the module docstring)."""

    def __init__(
        self, plain: socket.socket, flow: Flow, config: BenchConfig, meter: Meter, counts: _Counts
    ) -> None:
        self.plain = plain
        self.sock = trio.socket.from_stdlib_socket(plain)
        self.flow = flow
        self.config = config
        self.meter = meter
        self.counts = counts
        self.timeout_ns = round(config.timeout * 1e9)

    async def run(self) -> None:
        config, meter = self.config, self.meter
        pace = _pace(config, meter, self.flow.number)
        if pace is None:
            await self._closed_loop()
            return
        permits = trio.Semaphore(1) if config.interval is not None else None
        sending_done = False

        async def send(pair: trio.CancelScope) -> None:
            nonlocal sending_done
            while (start := await next_send(meter, pace, permits)) is not None:
                await self._send(start)
            sending_done = True
            if not self.flow.outstanding:
                pair.cancel()

        async def receive(pair: trio.CancelScope) -> None:
            while not (sending_done and not self.flow.outstanding):
                await trio.lowlevel.checkpoint()  # echoes may keep coming: let the sender run
                freed = await self._receive()
                if permits is not None:
                    for _ in range(freed):
                        permits.release()
            pair.cancel()

        await side_by_side(send, receive)

    async def _closed_loop(self) -> None:
        clock, take = self.meter.clock, self.meter.take
        freed = self.config.pipeline
        while True:
            sent = 0
            while sent < freed and take(start := clock()):
                await self._send(start)  # a trio send: a checkpoint
                sent += 1
            if not self.flow.outstanding:
                return
            if not sent:
                # Draining, or a duplicate: let the other flows run all the same.
                await trio.lowlevel.checkpoint()
            freed = await self._receive()

    async def _send(self, start: int) -> None:
        flow, counts = self.flow, self.counts
        sequence = flow.next
        flow.next += 1
        if start >= self.meter.measure_from:
            flow.first_measured = flow.first_measured or sequence
            counts.sent += 1
        flow.outstanding[sequence] = start
        await self.sock.send(flow.datagram(sequence))

    async def _receive(self) -> int:
        """Take in the next echo, or declare lost what is overdue; return the
        number of slots freed (datagrams echoed or lost).  Raises
        :exc:`EchoMismatch` for an echo that differs from every datagram sent."""
        flow, clock = self.flow, self.meter.clock
        try:
            # Most echoes are waiting already: no cancel scope, no trio wait.
            data = self.plain.recv(self.config.size + 1)
        except BlockingIOError:
            # Wake when the oldest datagram outstanding is due to be lost.
            oldest = next(iter(flow.outstanding.values()), None)
            limit = self.timeout_ns if oldest is None else oldest + self.timeout_ns - clock()
            with trio.move_on_after(max(0, limit) / 1e9):
                await trio.lowlevel.wait_readable(self.plain)
                return 0
            lost = flow.expire(clock() - self.timeout_ns)
            self.counts.lost += sum(map(flow.measured, lost))
            return len(lost)
        now = clock()
        if (line := flow.difference(data)) is not None:
            raise EchoMismatch(line)
        sequence = _HEADER.unpack_from(data)[1]
        start = flow.outstanding.pop(sequence, None)
        if start is None:
            _echoed_again(flow, sequence, self.counts)
            return 0
        self.counts.echoed += 1
        if sequence < flow.highest and flow.measured(sequence):
            self.counts.reordered += 1
        flow.highest = max(flow.highest, sequence)
        # Ping lines number datagrams: a lost one leaves a gap.
        self.meter.round_trip(start, now, flow.size, sequence - flow.first_measured + 1)
        return 1


def _echoed_again(flow: Flow, sequence: int, counts: _Counts) -> None:
    """Count the echo of a datagram no longer outstanding: late or a duplicate."""
    if sequence in flow.expired:
        del flow.expired[sequence]
        counts.late += flow.measured(sequence)
    else:
        counts.duplicates += flow.measured(sequence)


def _pace(config: BenchConfig, meter: Meter, number: int) -> Pace | None:
    """Flow *number*'s send times: open loop (flows take turns, together one
    datagram per tick), ping, or none (closed loop)."""
    if config.rate is not None:
        tick = round(1e9 / config.rate)
        start = meter.measure_from - round(config.warmup * 1e9)
        return Pace(start + tick * number, tick * config.connections, open_loop=True)
    if config.interval is not None:
        return Pace(meter.clock(), round(config.interval * 1e9), open_loop=False)
    return None
