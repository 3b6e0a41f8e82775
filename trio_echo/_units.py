"""Durations and sizes with units, as the command line takes them.

``50ms``, ``1.5s`` and ``2`` (seconds) are durations; ``1000``, ``512B``,
``64KiB`` and ``1.5MiB`` are sizes in bytes (binary units only: ``KB`` is
ambiguous, so it is refused with a hint rather than guessed).  Each parser
returns the value in seconds or bytes, or raises :exc:`ValueError` with a
message that says what it expected.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_duration", "parse_rate", "parse_size"]

# Unsigned decimal numbers only: no sign, exponent, nan or inf.
_QUANTITY: Final = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z/]*)")

DURATION_UNITS: Final = {"": 1.0, "s": 1.0, "ms": 0.001}

SIZE_UNITS: Final = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_duration(text: str) -> float:
    """Seconds in *text*: a number with ``ms`` or ``s`` (none means seconds)."""
    number, unit = _split(text, "duration", "50ms, 1.5s")
    if unit not in DURATION_UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r}: use ms or s")
    return float(number) * DURATION_UNITS[unit]


def parse_size(text: str) -> int:
    """Bytes in *text*: a number with ``B``, ``KiB``, ``MiB`` or ``GiB`` (none
    means bytes); fractions are allowed when they come to whole bytes."""
    return _size(text, "size", "1000, 64KiB, 1.5MiB")


def parse_rate(text: str) -> int:
    """Bytes per second in *text*: a size, optionally followed by ``/s``."""
    return _size(text.removesuffix("/s"), "rate", "64KiB, 1MiB/s")


def _size(text: str, kind: str, examples: str) -> int:
    number, unit = _split(text, kind, examples)
    if unit not in SIZE_UNITS:
        hint = f"use {unit[0].upper()}iB (binary)" if unit.upper() in ("KB", "MB", "GB") else ""
        raise ValueError(f"unknown unit {unit!r} in {text!r}: {hint or 'use B, KiB, MiB or GiB'}")
    # Exact arithmetic: 1.1MiB must not come out as 1153433.6000000001.
    whole, _, fraction = number.partition(".")
    scale: int = 10 ** len(fraction)
    numerator = int(whole or "0") * scale + int(fraction or "0")
    size, remainder = divmod(numerator * SIZE_UNITS[unit], scale)
    if remainder:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return size


def _split(text: str, kind: str, examples: str) -> tuple[str, str]:
    match = _QUANTITY.fullmatch(text.strip())
    if match is None and text.strip().startswith("-"):
        raise ValueError(f"invalid {kind} {text!r}: must not be negative")
    if match is None:
        raise ValueError(f"invalid {kind} {text!r}: expected a number and a unit, like {examples}")
    return match["number"], match["unit"]
