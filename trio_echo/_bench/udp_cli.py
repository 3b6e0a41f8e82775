"""``trio-echo bench --udp``: which options apply, the run, its output and exit status."""

from __future__ import annotations

import argparse
import json
import sys

from .address import TCPAddress, parse_address
from .udp import HEADER_SIZE, udp_bench, udp_summary

__all__ = ["run_udp"]

# Options of the stream modes that UDP does not have: (attribute, option).
_STREAM_ONLY = (
    ("rate", "--rate"),
    ("interval", "--interval"),
    ("connect_only", "--connect-only"),
    ("tls", "--tls"),
    ("cafile", "--cafile"),
    ("insecure", "--insecure"),
    ("send_proxy", "--send-proxy"),
    ("hgrm", "--hgrm"),
    ("warmup", "--warmup"),
)

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def run_udp(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the UDP mode; usage errors exit 2 naming the option."""
    for attribute, option in _STREAM_ONLY:
        if getattr(args, attribute):
            parser.error(f"argument {option}: not allowed with --udp")
    try:
        address = parse_address(args.address)
    except ValueError as exc:
        parser.error(f"argument ADDRESS: {exc}")
    if not isinstance(address, TCPAddress):
        parser.error("argument --udp: needs HOST:PORT, not a Unix socket")
    if args.size < HEADER_SIZE:
        parser.error(f"argument --size: --udp needs at least {HEADER_SIZE} bytes, got {args.size}")
    duration = args.duration
    if duration is None and args.count is None:
        duration = 10.0
    import trio

    try:
        result = trio.run(
            lambda: udp_bench(
                address,
                flows=args.connections,
                window=args.pipeline,
                size=args.size,
                count=args.count,
                duration=duration,
                timeout=args.timeout,
                stop=trio.Event(),
            )
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"trio-echo bench: {address}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result.to_json()) if args.json else udp_summary(result), flush=True)
    if result.corrupted:
        print(
            f"trio-echo bench: {result.corrupted} echo(es) differ from what was sent",
            file=sys.stderr,
        )
    elif not result.echoed:
        print("trio-echo bench: no datagram was echoed", file=sys.stderr)
    return 0 if result.ok else EXIT_FAILED
