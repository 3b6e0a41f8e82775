"""The command line's unit parsers: durations in seconds, sizes in bytes."""

from __future__ import annotations

import re

import pytest

from trio_echo._units import parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("1.5s", 1.5),
        ("2", 2.0),
        ("0", 0.0),
        (".5s", 0.5),
        ("250 ms", 0.25),
        (" 3s ", 3.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid duration ''"),
        ("ms", "invalid duration 'ms'"),
        ("-1ms", "invalid duration '-1ms': must not be negative"),
        ("1e3ms", "invalid duration '1e3ms'"),
        ("nan", "invalid duration 'nan'"),
        ("inf", "invalid duration 'inf'"),
        ("5parsecs", "unknown unit 'parsecs' in '5parsecs': use ms or s"),
        ("5m", "unknown unit 'm'"),
        ("10MS", "unknown unit 'MS'"),
    ],
)
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000", 1000),
        ("0", 0),
        ("512B", 512),
        ("64KiB", 65536),
        ("1MiB", 1 << 20),
        ("1.5MiB", 3 << 19),
        ("1.25KiB", 1280),
        ("2GiB", 2 << 30),
        ("0.5KiB", 512),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5", "'1.5' is not a whole number of bytes"),
        ("1.1MiB", "'1.1MiB' is not a whole number of bytes"),
        ("1KB", "unknown unit 'KB' in '1KB': use KiB"),
        ("1MB", "unknown unit 'MB' in '1MB': use MiB"),
        ("1kb", "unknown unit 'kb' in '1kb': use KiB"),
        ("1TiB", "unknown unit 'TiB' in '1TiB': use B, KiB, MiB or GiB"),
        ("-1", "invalid size '-1': must not be negative"),
        ("lots", "invalid size 'lots'"),
    ],
)
def test_bad_sizes(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "rate"), [("64KiB", 65536), ("64KiB/s", 65536), ("1000/s", 1000), ("1MiB/s", 1 << 20)]
)
def test_rates(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


def test_bad_rate_says_rate() -> None:
    with pytest.raises(ValueError, match=r"^invalid rate 'fast'"):
        parse_rate("fast")
