"""Command-line options for UDP echo and the Unix socket: their parser groups, their config.

Kept apart from :mod:`trio_echo._cli` (which calls in here) because these
options combine with the others by rules of their own:

* ``--udp`` adds UDP echo on the TCP host and port(s); ``--udp-only`` serves
  UDP alone there.
* ``--unix PATH`` alone serves only the Unix socket; with ``--host`` or
  ``--port`` also TCP, and with ``--udp``/``--udp-only`` also UDP (on the
  host and port, default or given).
* Neither UDP nor ``--unix`` combines with ``--workers`` above 1: the per-source
  rate limits would be per worker, and a socket file has one listener.
* ``--loss``, ``--duplicate`` and ``--reorder`` act on UDP only, and
  ``--rounds`` on streams only: given where they cannot act, they are usage errors.

Like :mod:`trio_echo._cli`, this imports neither trio nor the server.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._config import UDPConfig

__all__ = [
    "FIELD_OPTIONS",
    "add_transport_options",
    "check_transport_options",
    "transport_config",
]

# Config fields whose option is not simply --field-name.
FIELD_OPTIONS = {
    "source_rate": "--udp-source-rate",
    "source_bytes": "--udp-source-bytes",
    "global_rate": "--udp-global-rate",
    "global_bytes": "--udp-global-bytes",
    "max_sources": "--udp-max-sources",
}

# The UDP rate options: (option, metavar, config field, help); 0 is no limit.
_RATE_OPTIONS = (
    ("--udp-source-rate", "N", "source_rate", "datagrams per second echoed to one source"),
    ("--udp-source-bytes", "RATE", "source_bytes", "bytes per second echoed to one source"),
    ("--udp-global-rate", "N", "global_rate", "datagrams per second echoed in total"),
    ("--udp-global-bytes", "RATE", "global_bytes", "bytes per second echoed in total"),
)


def _mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected octal permissions like 0660, got {text!r}"
        ) from None


def add_transport_options(parser: argparse.ArgumentParser, rate: Any, size: Any) -> None:
    """Add the UDP and Unix socket option groups; *rate* and *size* are the
    ``type=`` converters of :mod:`trio_echo._cli`."""
    defaults = UDPConfig()
    udp = parser.add_argument_group(
        "UDP echo (RFC 862)",
        "never answers source ports 0, 7, 13, 17, 19, 37; drops datagrams over --max-message "
        "(never truncates) or over the rate limits; each token bucket holds one second's worth. "
        "--rounds, --framing and --idle-timeout do not apply to UDP",
    )
    which = udp.add_mutually_exclusive_group()
    which.add_argument(
        "--udp", action="store_true", help="also serve UDP echo on the TCP host and port(s)"
    )
    which.add_argument(
        "--udp-only", action="store_true", help="serve UDP echo on --host/--port, and no TCP"
    )
    for option, metavar, field, text in _RATE_OPTIONS:
        default = getattr(defaults, field)
        udp.add_argument(
            option,
            type=rate if metavar == "RATE" else int,
            metavar=metavar,
            help=f"{text}; 0: no limit (default: {default})",
        )
    udp.add_argument(
        "--udp-max-sources",
        type=int,
        metavar="N",
        help="source addresses whose rate buckets are remembered; the least recently seen "
        f"is forgotten beyond it (default: {defaults.max_sources})",
    )
    unix = parser.add_argument_group("Unix domain socket")
    unix.add_argument(
        "--unix",
        metavar="PATH",
        help="serve stream echo on a Unix socket at PATH (a stale file is replaced, a live "
        "one is an error; removed at shutdown); alone, instead of TCP: add --host or --port "
        "to serve TCP too",
    )
    unix.add_argument(
        "--unix-mode",
        type=_mode,
        metavar="MODE",
        help="permissions of the socket file, in octal (0660) (default: from the umask)",
    )


def transport_config(args: argparse.Namespace) -> tuple[bool, UDPConfig | None]:
    """Whether to serve TCP, and the UDP config (``None``: no UDP), from *args*.

    Raises:
      ValueError: from the validators (naming the field), or for UDP options
        given without UDP (naming the option's field).
    """
    serve_udp = args.udp or args.udp_only
    tcp = not args.udp_only and (
        args.unix is None or args.host is not None or args.port is not None
    )
    given: dict[str, int | None] = {}
    for option, _, field, _ in _RATE_OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            given[field] = value or None
    if args.udp_max_sources is not None:
        given["max_sources"] = args.udp_max_sources
    if not serve_udp:
        if given:
            raise ValueError(f"{next(iter(given))} applies only with --udp or --udp-only")
        for field in ("loss", "duplicate", "reorder"):
            if getattr(args, field):
                raise ValueError(f"{field} applies only to UDP echo (--udp or --udp-only)")
        return tcp, None
    return tcp, UDPConfig(**given)  # type: ignore[arg-type]


def check_transport_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for combinations the rules above refuse."""
    serve_udp = args.udp or args.udp_only
    if args.workers > 1 and (serve_udp or args.unix is not None):
        option = "--udp-only" if args.udp_only else "--udp"
        if args.unix is not None:
            option = "--unix"
        parser.error(f"argument {option}: not allowed with --workers above 1")
    if args.udp_only and args.unix is None and args.rounds is not None:
        parser.error("argument --rounds: applies to stream echo; --udp-only serves none")
    if args.udp_only and args.fd:
        parser.error("argument --fd: not allowed with --udp-only (it names TCP listeners)")
