"""One run of the measuring client: :func:`bench`."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Final

import attrs
import trio

from .address import TCPAddress
from .config import BenchConfig
from .connect import (
    V2_SIGNATURE,
    Endpoint,
    error_kind,
    error_reason,
    open_socket,
    resolve,
    tls_context,
)
from .loops import Progress, ServerClosed, finish, paced_stream
from .meter import Clock, Meter
from .multiplex import closed_loop_multiplexed
from .pattern import EchoMismatch, Pattern, Verifier
from .result import BenchResult, DatagramCounts, LatencySummary
from .udp import UDPUnreachable, udp_flows

__all__ = ["OnProgress", "OnRoundTrip", "ServerUnreachable", "bench"]

#: Seconds between two calls of ``on_progress``.
PROGRESS_EVERY: Final = 0.5

OnProgress = Callable[[float, int, int], None]
"""Called with the seconds since the start, the round trips measured so far and the
p99 (ns) of those measured since the previous call (0 if none)."""
OnRoundTrip = Callable[[int, int], None]
"""Called with the sequence number (from 1) and latency (ns) of each measured round trip."""


# The first byte of each version's PROXY header.
_PROXY_FIRST_BYTE: Final = {"v1": ord("P"), "v2": V2_SIGNATURE[0]}


class ServerUnreachable(Exception):
    """The server cannot be reached (the first connection failed); the message
    is one line naming the address and the error."""


@attrs.frozen
class _Opened:
    plain: socket.socket
    sock: trio.socket.SocketType
    stream: trio.abc.Stream | None
    """The TLS stream, if any."""


def _mode(config: BenchConfig) -> str:
    if config.connect_only:
        return "connect"
    if config.interval is not None:
        return "ping"
    return "closed" if config.rate is None else "open"


class _Run:
    """The connections of one run: opening them, and what each one does."""

    def __init__(self, config: BenchConfig, meter: Meter) -> None:
        self.config = config
        self.meter = meter
        self.endpoint: Endpoint | None = None
        self.context = (
            tls_context(cafile=config.cafile, insecure=config.insecure) if config.tls else None
        )
        address = config.address
        self.server_hostname = address.host if isinstance(address, TCPAddress) else None
        self.pattern = None if config.connect_only or config.udp else Pattern(config.size)
        #: What the watchdog looks at: each echoing connection's stream and its scope.
        self.watched: list[tuple[Verifier, Progress, trio.CancelScope]] = []
        self.timed_out: set[int] = set()
        #: Stopped early (``stop`` set): the end is fixed.
        self.stopped = False
        #: UDP: the datagram counts, or why the server is unreachable.
        self.datagrams: DatagramCounts | None = None
        self.unreachable: str | None = None

    async def first(self, endpoints: list[Endpoint]) -> _Opened:
        """The first connection, to the first endpoint that answers; :exc:`ServerUnreachable`
        if none does."""
        error: BaseException | None = None
        for endpoint in endpoints:
            self.endpoint = endpoint
            try:
                return await self.open()
            except (OSError, trio.BrokenResourceError) as exc:
                error = exc
        assert error is not None
        raise ServerUnreachable(f"cannot connect to {self.config.address}: {error_reason(error)}")

    async def open(self) -> _Opened:
        """One connection, its connect time recorded (:exc:`TimeoutError` after ``timeout``)."""
        meter, config = self.meter, self.config
        assert self.endpoint is not None
        started = meter.clock()
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(config.timeout) as scope:
            plain, sock = await open_socket(self.endpoint, send_proxy=config.send_proxy)
            if self.context is not None:
                ssl_stream = trio.SSLStream(
                    trio.SocketStream(sock), self.context, server_hostname=self.server_hostname
                )
                try:
                    await ssl_stream.do_handshake()
                except BaseException:
                    sock.close()
                    raise
                stream = ssl_stream
        if scope.cancelled_caught:
            raise TimeoutError(f"no connection within {config.timeout:g} s")
        done = meter.clock()
        if not config.connect_only or (started >= meter.measure_from and done < meter.stop_at):
            meter.connected(done - started)
            meter.last = done
        return _Opened(plain, sock, stream)

    async def connection(
        self, number: int, opened: _Opened | None, stop: trio.CancelScope
    ) -> None:
        """Connection *number* from start to end; a failure is counted, never raised
        (a mismatch also cancels *stop*, the whole run)."""
        config, meter = self.config, self.meter
        connected = opened is not None
        with trio.CancelScope() as scope:
            try:
                if config.connect_only:
                    await self._connect_loop(opened)
                    return
                if opened is None:
                    opened = await self.open()
                    connected = True
                try:
                    await self._echo(number, opened, scope)
                finally:
                    opened.sock.close()
            except EchoMismatch as exc:
                meter.error("mismatch", self.mismatch_line(exc))
                stop.cancel()
            except ServerClosed as exc:
                meter.error("closed", str(exc))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                kind = error_kind(exc) if connected else "connect"
                meter.error(kind, f"connection {number}: {error_reason(exc)}")
        if number in self.timed_out:
            meter.error("timeout", f"connection {number}: no echo within {config.timeout:g} s")

    async def _connect_loop(self, opened: _Opened | None) -> None:
        meter = self.meter
        while True:
            if opened is not None:
                if opened.stream is not None:
                    with trio.move_on_after(self.config.timeout):
                        await opened.stream.aclose()
                opened.sock.close()
            if not meter.take(meter.clock()):
                return
            opened = await self.open()

    async def _echo(self, number: int, opened: _Opened, scope: trio.CancelScope) -> None:
        config, meter = self.config, self.meter
        assert self.pattern is not None
        verifier = Verifier(self.pattern, number)
        progress = Progress(meter.clock())
        self.watched.append((verifier, progress, scope))
        stream = opened.stream or trio.SocketStream(opened.sock)
        if config.rate is not None:
            # Connections take turns: together they send one message per tick.
            tick = round(1e9 / config.rate)
            start = meter.measure_from - round(config.warmup * 1e9)
            await paced_stream(
                stream,
                verifier,
                meter,
                progress,
                in_flight=None,
                period=tick * config.connections,
                first=start + tick * number,
            )
        elif config.interval is not None:
            period = round(config.interval * 1e9)
            await paced_stream(
                stream, verifier, meter, progress, in_flight=1, period=period, first=meter.clock()
            )
        else:
            await paced_stream(
                stream, verifier, meter, progress, in_flight=config.pipeline, period=None
            )
        await finish(stream, verifier)

    def mismatch_line(self, exc: EchoMismatch) -> str:
        """The mismatch's one line; when the first byte back is the first of
        the PROXY header sent, it says so: the server echoed the header, so it
        does not read the PROXY protocol."""
        line = str(exc)
        version = self.config.send_proxy
        if version is not None and (exc.offset, exc.received) == (0, _PROXY_FIRST_BYTE[version]):
            line += f" (the server echoed the PROXY {version} header: it does not read it)"
        return line

    def start_window(self, now: int) -> None:
        """Start the run at *now*: the warm-up, then the measured window."""
        config, meter = self.config, self.meter
        meter.measure_from = now + round(config.warmup * 1e9)
        if config.stop_after is not None and not self.stopped:
            meter.stop_at = meter.measure_from + round(config.stop_after * 1e9)

    @property
    def multiplexed(self) -> bool:
        """Whether the run is the plain closed loop, all connections in one task."""
        config = self.config
        return not (config.tls or config.connect_only or config.rate or config.interval)

    async def multiplex(self, first: _Opened) -> None:
        """The plain closed loop: connect the rest, then echo over all in one task
        (:mod:`.multiplex`); a mismatch is counted, not raised."""
        assert self.pattern is not None
        config, meter = self.config, self.meter
        opened: list[tuple[int, _Opened]] = [(0, first)]

        async def connect(number: int) -> None:
            try:
                opened.append((number, await self.open()))
            except (OSError, trio.BrokenResourceError) as exc:
                meter.error("connect", f"connection {number}: {error_reason(exc)}")

        try:
            async with trio.open_nursery() as nursery:
                for number in range(1, config.connections):
                    nursery.start_soon(connect, number)
            # Connecting thousands takes a while: the run starts once all are open.
            if config.connections > 1:
                self.start_window(meter.clock())
            connections = [
                (each.plain, Verifier(self.pattern, number)) for number, each in sorted(opened)
            ]
            await closed_loop_multiplexed(
                connections,
                meter,
                pipeline=config.pipeline,
                echo_timeout=config.timeout,
                on_error=meter.error,
            )
        except EchoMismatch as exc:
            meter.error("mismatch", self.mismatch_line(exc))
        finally:
            for _, each in opened:
                each.sock.close()

    async def udp(self, endpoint: Endpoint) -> None:
        """UDP flows to *endpoint* (:mod:`.udp`); an unreachable server is
        noted in :attr:`unreachable`, not raised."""
        try:
            self.datagrams = await udp_flows(self.config, self.meter, endpoint)
        except (UDPUnreachable, OSError) as exc:
            self.unreachable = f"cannot reach {self.config.address} over UDP: {error_reason(exc)}"

    async def watchdog(self) -> None:
        """Cancel each connection whose echo is outstanding for longer than ``timeout``."""
        limit = round(self.config.timeout * 1e9)
        while True:
            await trio.sleep(min(0.25, self.config.timeout / 4))
            now = self.meter.clock()
            for verifier, progress, scope in self.watched:
                if verifier.outstanding and now - progress.at > limit and not scope.cancel_called:
                    self.timed_out.add(verifier.connection)
                    scope.cancel()


async def bench(
    config: BenchConfig,
    *,
    on_round_trip: OnRoundTrip | None = None,
    on_progress: OnProgress | None = None,
    stop: trio.Event | None = None,
    clock: Clock = time.perf_counter_ns,
) -> BenchResult:
    """Measure the echo server at ``config.address``; return the figures.

    The first connection is made alone: if it fails, :exc:`ServerUnreachable` (one
    line naming the address and the error).  Then every connection runs until
    ``duration`` (after ``warmup``) has passed or ``count`` round trips are
    measured, waits for its last echoes, half-closes and waits for the server
    to close.  A connection that fails (closed or reset early, no echo within
    ``timeout``, TLS errors) is counted in :attr:`BenchResult.errors`; the
    first wrong, missing or extra byte stops the whole run, with its one line
    in :attr:`BenchResult.failure`.  Nothing is raised for either.

    With ``udp``, each connection is a flow of datagrams (:mod:`.udp`): no
    connection is made first, an ICMP error before any echo raises
    :exc:`ServerUnreachable`, and :attr:`BenchResult.udp` counts the
    datagrams sent, lost, late, duplicated and reordered.

    *on_round_trip* and *on_progress* (every 0.5 s) report as the run goes;
    setting *stop* ends the run early, as if its duration had passed.  *clock*
    (nanoseconds) is :func:`time.perf_counter_ns`; tests pass trio's virtual
    clock.  Cancelling the caller cancels the run (nothing is returned).
    """
    meter = Meter(clock, count=config.count)
    meter.on_round_trip = on_round_trip
    run = _Run(config, meter)
    try:
        endpoints = await resolve(config.address)
    except OSError as exc:
        raise ServerUnreachable(
            f"cannot connect to {config.address}: {error_reason(exc)}"
        ) from None
    started = clock()
    run.start_window(started)
    first: _Opened | None = None
    if not config.udp:
        # The first connect is measured whatever the warm-up: it is also the
        # reachability check (UDP has none: an ICMP error answers the first datagrams).
        measure_from, meter.measure_from = meter.measure_from, started
        if config.connect_only:
            meter.take(started)
        first = await run.first(endpoints)
        meter.measure_from = measure_from

    async def report() -> None:
        assert on_progress is not None
        previous = meter.histogram.copy()
        while True:
            await trio.sleep(PROGRESS_EVERY)
            current = meter.histogram.copy()
            recent = current.minus(previous).percentile(99)
            previous = current
            on_progress((clock() - started) / 1e9, meter.round_trips, recent)

    async def stopper() -> None:
        assert stop is not None
        await stop.wait()
        run.stopped = True
        meter.stop_at = min(meter.stop_at, clock())

    with trio.CancelScope() as stop_scope:
        async with trio.open_nursery() as helpers:
            helpers.start_soon(run.watchdog)
            if on_progress is not None:
                helpers.start_soon(report)
            if stop is not None:
                helpers.start_soon(stopper)
            if config.udp:
                await run.udp(endpoints[0])
            elif run.multiplexed:
                assert first is not None
                await run.multiplex(first)
            else:
                async with trio.open_nursery() as nursery:
                    for number in range(config.connections):
                        opened = first if number == 0 else None
                        nursery.start_soon(run.connection, number, opened, stop_scope)
            helpers.cancel_scope.cancel()
    if run.unreachable is not None:
        raise ServerUnreachable(run.unreachable)
    end = clock()
    if meter.remaining <= 0 and meter.last:
        end = meter.last
    seconds = max(0, min(end, meter.stop_at) - meter.measure_from) / 1e9
    return BenchResult(
        address=str(config.address),
        mode=_mode(config),
        connections=config.connections,
        size=config.size,
        seconds=seconds,
        round_trips=meter.round_trips,
        connects=meter.connects,
        bytes=meter.bytes,
        latency=LatencySummary.of(meter.histogram),
        connect=LatencySummary.of(meter.connect_histogram),
        errors=meter.errors,
        failure=meter.failure,
        histogram=meter.histogram,
        connect_histogram=meter.connect_histogram,
        udp=run.datagrams,
    )
