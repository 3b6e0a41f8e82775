"""What both command lines (``trio-echo`` and ``trio-echo bench``) share: the
parser class, and the argument types: durations, sizes, rates, descriptors, networks.

Each type is an argparse ``type`` whose error is one line saying what was
expected, which argparse prints after the option's name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from ._units import parse_duration, parse_rate, parse_size

__all__ = [
    "DESCRIPTOR",
    "DURATION",
    "EXIT_USAGE",
    "NETWORKS",
    "ORDINAL",
    "POSITIVE_DURATION",
    "PROBABILITY",
    "RATE",
    "SIZE",
    "TIMEOUT",
    "Parser",
    "typed",
]

T = TypeVar("T")

#: The exit status of a usage error.
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage error is the usage, then one line, status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def typed(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """An argparse ``type`` whose errors carry *parse*'s message (argparse
    would otherwise print only ``invalid <function name> value``)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"must be a duration > 0, like 1s or 500ms; got {text!r}")
    return seconds


def _descriptor(text: str) -> int:
    if not text.lstrip("-").isdigit():
        raise ValueError(f"expected a descriptor number, got {text!r}")
    if int(text) < 0:
        raise ValueError(f"a descriptor number is >= 0, got {text}")
    return int(text)


DURATION = typed(parse_duration, "duration")
POSITIVE_DURATION = typed(_positive_duration, "duration")
SIZE = typed(parse_size, "size")
RATE = typed(parse_rate, "rate")


# ---- types of fault options ----


def _timeout(text: str) -> float:
    """``--timeout``: a duration, or ``never`` (``0``: never close, as Toxiproxy)."""
    return 0.0 if text.strip() == "never" else parse_duration(text)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a probability from 0 to 1, like 0.5; got {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"a probability is from 0 to 1, got {text}")
    return value


def _cidrs(text: str) -> tuple[str, ...]:
    import ipaddress

    networks = tuple(part.strip() for part in text.split(",") if part.strip())
    if not networks:
        raise ValueError("expected CIDR[,CIDR...], got nothing")
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not a network like 10.0.0.0/8 or fd00::/8") from None
    return networks


def _ordinal(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a connection number >= 1, got {text!r}")
    return int(text)


DESCRIPTOR = typed(_descriptor, "descriptor")
TIMEOUT = typed(_timeout, "timeout")
PROBABILITY = typed(_probability, "probability")
NETWORKS = typed(_cidrs, "networks")
ORDINAL = typed(_ordinal, "connection number")
