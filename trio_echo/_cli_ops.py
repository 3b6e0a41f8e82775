"""The command line's operations options: ``--metrics`` and what it needs (parsing only).

Kept apart from :mod:`trio_echo._cli` so that the parser's core stays about
echoing; like it, this module imports neither trio nor the server.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress

from ._cli_types import NETWORKS

__all__ = ["METRICS_EXTRA", "add_operations_options", "check_metrics_available", "parse_endpoint"]

METRICS_EXTRA = "--metrics needs h11 and prometheus_client: pip install 'trio-echo[metrics]'"

Endpoint = tuple[str | None, int]


def parse_endpoint(text: str) -> Endpoint:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``*:PORT`` (every address), or a
    bare ``PORT`` (127.0.0.1) -> ``(host, port)``; ``None`` binds every address.

    Raises:
      ValueError: not one of those forms, or a port outside 0-65535.
    """
    host: str | None
    if text.isdigit():
        host, port = "127.0.0.1", text
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected HOST:PORT or PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
        elif ":" in host:
            raise ValueError(f"write an IPv6 address in brackets, like [::1]:9100; got {text!r}")
        host = None if host in ("", "*") else host
    if int(port) > 65535:
        raise ValueError(f"a port is between 0 and 65535, got {port}")
    return host, int(port)


def _endpoint(text: str) -> Endpoint:
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_endpoint.__name__ = "endpoint"


#: Backslash escapes --hello understands (a shell passes "\\n" as two characters).
ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """*text* with ``\\n``, ``\\r``, ``\\t`` and ``\\\\`` replaced; other backslashes kept."""
    out = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append(ESCAPES.get(following, char + following))
        else:
            out.append(char)
    return "".join(out)


def _rate(text: str) -> float:
    try:
        rate = float(text.removesuffix("/s"))
    except ValueError:
        rate = -1.0
    if not (0 < rate < float("inf")):
        raise argparse.ArgumentTypeError(f"expected connections per second > 0, got {text!r}")
    return rate


_rate.__name__ = "rate"


def add_operations_options(parser: argparse.ArgumentParser) -> None:
    """Add the operations options (and the workers' internal ``--stats-fd``) to *parser*."""
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--hello",
        type=unescape,
        metavar="TEXT",
        help="send TEXT once when a connection opens, before any echo; placeholders "
        "{hostname}, {pid}, {worker}, {port}; \\n, \\r, \\t are escapes (default: off)",
    )
    ops.add_argument(
        "--metrics",
        type=_endpoint,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz over HTTP on HOST:PORT "
        "(a bare PORT is 127.0.0.1:PORT; :PORT is every address) (default: off)",
    )
    ops.add_argument(
        "--proxy-trusted",
        type=NETWORKS,
        metavar="CIDR[,CIDR...]",
        help="with --proxy-protocol, honour PROXY headers only from these networks; "
        "close connections from elsewhere (reason proxy-untrusted) (default: any source)",
    )
    ops.add_argument(
        "--max-connections-per-ip",
        type=int,
        metavar="N",
        help="at most N connections open at once per client address; more are closed "
        "(reason per-ip-limit) (default: no limit)",
    )
    ops.add_argument(
        "--connection-rate-per-ip",
        type=_rate,
        metavar="R",
        help="at most R new connections per second per client address, bursts of max(1, R); "
        "more are closed (reason per-ip-rate) (default: no limit)",
    )
    ops.add_argument(
        "--tls-min-version",
        choices=("1.2", "1.3"),
        help="oldest TLS version accepted (needs --certfile; default: 1.2)",
    )
    # Internal: the --workers parent's pipe for this worker's statistics reports.
    ops.add_argument("--stats-fd", type=int, help=argparse.SUPPRESS)


def check_metrics_available() -> str | None:
    """``None`` if the metrics extra is installed, else the one-line reason."""
    for module in ("h11", "prometheus_client"):
        if importlib.util.find_spec(module) is None:
            return METRICS_EXTRA
    return None
