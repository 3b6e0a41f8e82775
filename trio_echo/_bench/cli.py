"""``trio-echo bench ADDRESS [options]``: arguments to a :class:`BenchConfig`, the
run, and what it prints.

Exit statuses: 0 when the run completed and every byte verified; 1 for a
wrong, missing or extra byte, a connection lost or timed out, an unreachable
server, or no completed round trip (connect-only: no connection); 2 for bad
arguments (one line naming the option); 130 for a second Ctrl-C (the first
ends the run early, with its summary).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .._cli_types import SIZE, Parser, typed
from .._fdlimit import FD_RESERVE
from .._units import parse_duration
from .address import parse_address
from .config import BenchConfig

__all__ = ["build_parser", "main"]

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _duration(at_least_zero: bool) -> Any:
    def parse(text: str) -> float:
        seconds = parse_duration(text)
        if seconds < 0 or (seconds == 0 and not at_least_zero):
            raise ValueError(f"must be a duration > 0, like 1s or 500ms; got {text!r}")
        return seconds

    return typed(parse, "duration")


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"must be a whole number >= 1; got {text!r}")
    return int(text)


def _rate(text: str) -> float:
    number = text.removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise ValueError(
            f"must be messages per second, like 1000 or 1000/s; got {text!r}"
        ) from None
    if not 0 < rate < float("inf"):
        raise ValueError(f"must be > 0 messages per second; got {text!r}")
    return rate


def build_parser() -> argparse.ArgumentParser:
    """The ``trio-echo bench`` argument parser."""
    parser = Parser(
        prog="trio-echo bench",
        description="Measure an echo server: round trips per second and latency, "
        "every echoed byte verified.  Durations take ms or s; sizes B, KiB or MiB.",
        epilog="Exit status: 0 all verified; 1 a failure (mismatch, lost connection, "
        "unreachable, nothing completed); 2 bad arguments.  Ctrl-C ends the run early.",
    )
    add = parser.add_argument
    add("address", metavar="ADDRESS", help="HOST:PORT, [V6ADDR]:PORT or unix:PATH")
    mode = parser.add_argument_group("modes (default: closed loop, one message in flight)")
    mode.add_argument(
        "--connections", type=typed(_count, "count"), default=1, metavar="N",
        help="connections open at once (default 1)",
    )  # fmt: skip
    mode.add_argument(
        "--pipeline", type=typed(_count, "count"), default=1, metavar="K",
        help="closed loop: messages in flight per connection (default 1)",
    )  # fmt: skip
    mode.add_argument(
        "--rate", type=typed(_rate, "rate"), metavar="R",
        help="open loop: messages per second over all connections; latency "
        "counts from each message's intended send time",
    )  # fmt: skip
    mode.add_argument(
        "--interval", type=_duration(False), metavar="T",
        help="ping: one connection, one message every T, one line per round trip",
    )  # fmt: skip
    mode.add_argument(
        "--connect-only", action="store_true",
        help="connect (and handshake), close, again: connections per second",
    )  # fmt: skip
    mode.add_argument(
        "--udp", action="store_true",
        help="UDP echo (trio-echo --udp), in any mode above but --connect-only: each "
        "connection a flow of datagrams; reports loss, duplicates and reordering",
    )  # fmt: skip
    run = parser.add_argument_group("how much")
    run.add_argument("--size", type=SIZE, default=64, help="bytes per message (default 64)")
    run.add_argument(
        "--duration", type=_duration(False), metavar="D",
        help="measure for D after the warm-up (default 10s unless --count)",
    )  # fmt: skip
    run.add_argument(
        "--count", type=typed(_count, "count"), metavar="N",
        help="stop after N measured round trips (connect-only: connections; UDP: "
        "datagrams sent)",
    )  # fmt: skip
    run.add_argument(
        "--warmup", type=_duration(True), default=0.0, metavar="D",
        help="run D first, verified but excluded from every figure (default 0)",
    )  # fmt: skip
    run.add_argument(
        "--timeout", type=_duration(False), default=10.0, metavar="D",
        help="a connect, or an echo outstanding, fails after D (UDP: the datagram is "
        "lost) (default 10s)",
    )  # fmt: skip
    tls = parser.add_argument_group("TLS and PROXY protocol")
    tls.add_argument("--tls", action="store_true", help="speak TLS")
    tls.add_argument("--cafile", metavar="PEM", help="trust these CAs instead of the system's")
    tls.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    tls.add_argument(
        "--send-proxy", choices=("v1", "v2"), help="send a PROXY protocol header first"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object on stdout")
    out.add_argument(
        "--hgrm", metavar="PATH", help="write HdrHistogram's percentile distribution text"
    )
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BenchConfig:
    """The config, or a usage error (exit 2) naming the option."""
    try:
        address = parse_address(args.address)
    except ValueError as exc:
        parser.error(f"argument ADDRESS: {exc}")
    try:
        return BenchConfig(
            address=address,
            connections=args.connections,
            pipeline=args.pipeline,
            rate=args.rate,
            count=args.count,
            interval=args.interval,
            connect_only=args.connect_only,
            size=args.size,
            duration=args.duration,
            warmup=args.warmup,
            timeout=args.timeout,
            tls=args.tls,
            cafile=args.cafile,
            insecure=args.insecure,
            send_proxy=args.send_proxy,
            udp=args.udp,
        )
    except (ValueError, TypeError) as exc:
        message = str(exc)
        option = "--" + message.split(" ", 1)[0].strip("'").replace("_", "-")
        parser.error(f"argument {option}: {message}")


def main(argv: Sequence[str]) -> int:
    """Run ``trio-echo bench`` with *argv* (the arguments after ``bench``)."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    config = config_from_args(parser, args)
    if config.tls:
        from .connect import tls_context

        try:
            tls_context(cafile=config.cafile, insecure=config.insecure)
        except OSError as exc:
            parser.error(f"argument --cafile: cannot use {config.cafile}: {exc.strerror or exc}")
    _raise_fd_limit(config.connections + FD_RESERVE)
    hgrm: TextIO | None = None
    if args.hgrm is not None:
        try:
            hgrm = open(args.hgrm, "w", encoding="ascii")  # noqa: SIM115 -- closed below
        except OSError as exc:
            parser.error(f"argument --hgrm: cannot write {args.hgrm}: {exc.strerror}")
    try:
        import trio

        try:
            return trio.run(_run, config, args.json, hgrm)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    finally:
        if hgrm is not None:
            hgrm.close()


def _raise_fd_limit(needed: int) -> None:
    """Raise the soft open file limit towards *needed* (one descriptor per
    connection); where the hard limit forbids it, the connections beyond fail
    with "Too many open files", counted as ``connect`` errors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _run(config: BenchConfig, as_json: bool, hgrm: TextIO | None) -> int:
    import trio

    from .output import PROGRESS_CLEAR, ping_line, progress_line, summary
    from .run import ServerUnreachable, bench

    live = sys.stdout.isatty() and not as_json and config.interval is None
    last = [0.0, 0]

    def on_progress(elapsed: float, round_trips: int, p99: int) -> None:
        rate = (round_trips - last[1]) / (elapsed - last[0]) if elapsed > last[0] else 0.0
        last[:] = [elapsed, round_trips]
        sys.stdout.write(progress_line(elapsed, round_trips, rate, p99))
        sys.stdout.flush()

    def on_round_trip(sequence: int, latency: int) -> None:
        print(ping_line(sequence, config.size, latency), flush=True)

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT) as signals:

        async def first_interrupt() -> None:
            async for _ in signals:
                if stop.is_set():
                    raise KeyboardInterrupt
                stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_interrupt)
            try:
                result = await bench(
                    config,
                    on_round_trip=on_round_trip if config.interval and not as_json else None,
                    on_progress=on_progress if live else None,
                    stop=stop,
                )
            except ServerUnreachable as exc:
                print(f"trio-echo bench: {exc}", file=sys.stderr)
                return EXIT_FAILED
            finally:
                nursery.cancel_scope.cancel()
    if live:
        sys.stdout.write(PROGRESS_CLEAR)
    print(json.dumps(result.to_json()) if as_json else summary(result), flush=True)
    if hgrm is not None:
        histogram = result.connect_histogram if config.connect_only else result.histogram
        histogram.write_hgrm(hgrm)
    if result.failure is not None:
        print(f"trio-echo bench: {result.failure}", file=sys.stderr)
    elif not result.ok:
        if config.udp:
            print("trio-echo bench: no datagram was echoed", file=sys.stderr)
        else:
            what = "connection" if config.connect_only else "round trip"
            print(f"trio-echo bench: no {what} completed", file=sys.stderr)
    return 0 if result.ok else EXIT_FAILED
