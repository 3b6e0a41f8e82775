"""What ``trio-echo bench`` connects to: ``HOST:PORT``, ``[V6ADDR]:PORT`` or ``unix:PATH``."""

from __future__ import annotations

import ipaddress

import attrs

__all__ = ["TCPAddress", "UnixAddress", "parse_address"]


@attrs.frozen
class TCPAddress:
    """A host name or IP address and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class UnixAddress:
    """A Unix-domain stream socket's path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


def parse_address(text: str) -> TCPAddress | UnixAddress:
    """The address in *text*, or :exc:`ValueError` saying what was expected."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError("unix: needs a path, like unix:/run/echo.sock")
        return UnixAddress(text[5:])
    expected = "expected HOST:PORT, [V6ADDR]:PORT or unix:PATH"
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ValueError(f"invalid address {text!r}: {expected}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            problem = f"{host!r} is not an IPv6 address"
            raise ValueError(f"invalid address {text!r}: {problem}") from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"invalid address {text!r}: {expected}")
        if ":" in host:
            raise ValueError(f"invalid address {text!r}: put an IPv6 address in brackets")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid address {text!r}: the port must be 1 to 65535")
    return TCPAddress(host, int(port))
