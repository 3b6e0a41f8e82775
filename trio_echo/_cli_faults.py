"""The fault options of the command line: one table; each sets the ``Faults`` field of its name."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import attrs

from ._cli_types import DURATION, NETWORKS, ORDINAL, PROBABILITY, RATE, SIZE, TIMEOUT
from ._faultconfig import Faults

__all__ = ["FAULT_OPTIONS", "add_fault_options"]


# The fault options: (option, metavar, help).  Each sets the Faults field of
# the same name, and defaults to that field's default (off).
FAULT_OPTIONS = (
    ("--latency", "DURATION", "delay each echo"),
    ("--jitter", "DURATION", "vary each delay uniformly by up to +/- this (at most --latency)"),
    ("--fragment", "SIZE", "write each echo in pieces of at most SIZE bytes, one send each"),
    ("--fragment-delay", "DURATION", "wait this long between the pieces (needs --fragment)"),
    ("--bandwidth", "RATE", "pace each connection's echoes to RATE bytes/s (64KiB or 64KiB/s)"),
    (
        "--stall-after",
        "SIZE",
        "after SIZE bytes echoed, stop reading and writing until the idle timeout",
    ),
    ("--reset-after", "SIZE", "after echoing SIZE bytes, abort the connection with a TCP reset"),
    ("--loss", "PERCENT", "UDP: drop this percentage of the echoes"),
    ("--duplicate", "PERCENT", "UDP: echo this percentage of the datagrams twice"),
    (
        "--reorder",
        "COUNT",
        "UDP: hold a datagram back behind the next COUNT echoes",
    ),
    ("--slow-close", "DURATION", "wait this long, silent, before each clean close"),
    (
        "--timeout",
        "TIMEOUT",
        "stop answering (input read and dropped), then close after TIMEOUT; 0 or 'never': never",
    ),
    ("--limit-data", "SIZE", "close cleanly once SIZE bytes have been echoed"),
    (
        "--read-bandwidth",
        "RATE",
        "read at most RATE bytes/s from each client (tests its send-side backpressure)",
    ),
    ("--toxicity", "P", "probability that a connection gets the faults (default: 1)"),
    ("--target-cidr", "CIDR[,CIDR...]", "faults only for clients in these networks"),
    ("--target-connection", "K", "faults only for the K-th connection (1: the first)"),
    (
        "--seed",
        "N",
        "seed for --jitter, --toxicity, --loss and --duplicate, to replay a run "
        "(default: drawn at start and logged)",
    ),
)


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group(
        "faults", "misbehave on purpose, to test clients (all off by default)"
    )
    types: dict[str, Callable[[str], object]] = {
        "DURATION": DURATION,
        "SIZE": SIZE,
        "RATE": RATE,
        "N": int,
        "COUNT": int,
        "PERCENT": float,
        "TIMEOUT": TIMEOUT,
        "P": PROBABILITY,
        "CIDR[,CIDR...]": NETWORKS,
        "K": ORDINAL,
    }
    fields = attrs.fields_dict(Faults)
    for option, metavar, text in FAULT_OPTIONS:
        default = fields[option[2:].replace("-", "_")].default
        faults.add_argument(
            option, type=types[metavar], metavar=metavar, default=default, help=text
        )
