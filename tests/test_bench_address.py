"""The bench's ADDRESS argument (trio_echo._bench.address)."""

from __future__ import annotations

import pytest

from trio_echo._bench.address import TCPAddress, UnixAddress, parse_address


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("127.0.0.1:7", TCPAddress("127.0.0.1", 7), "127.0.0.1:7"),
        ("localhost:65535", TCPAddress("localhost", 65535), "localhost:65535"),
        ("[::1]:7000", TCPAddress("::1", 7000), "[::1]:7000"),
        ("unix:/run/echo.sock", UnixAddress("/run/echo.sock"), "unix:/run/echo.sock"),
    ],
)
def test_addresses_parse_and_print_as_given(
    text: str, expected: TCPAddress | UnixAddress, shown: str
) -> None:
    address = parse_address(text)
    assert address == expected
    assert str(address) == shown


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        (":7", "expected HOST:PORT"),
        ("127.0.0.1:0", "port must be 1 to 65535"),
        ("127.0.0.1:65536", "port must be 1 to 65535"),
        ("127.0.0.1:http", "port must be 1 to 65535"),
        ("::1:7", "brackets"),
        ("[::1]7", "expected HOST:PORT"),
        ("[example.com]:7", "not an IPv6 address"),
        ("unix:", "needs a path"),
    ],
)
def test_bad_addresses_say_what_was_expected(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_address(text)
