"""Opening one connection to the server: resolve, connect, PROXY header, TLS.

Errors are not handled here: they propagate, and :func:`error_kind` names the
kind a failed connection is counted under.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import struct
from collections.abc import Iterator
from typing import Any, Final

import trio

from .address import TCPAddress, UnixAddress

__all__ = [
    "V2_SIGNATURE",
    "causes",
    "error_kind",
    "error_reason",
    "open_socket",
    "proxy_header",
    "resolve",
    "tls_context",
]

Endpoint = tuple[int, Any]
"""An address family and a socket address to connect to."""

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"


async def resolve(address: TCPAddress | UnixAddress) -> list[Endpoint]:
    """Where *address* may be reached, in the resolver's order (:exc:`OSError`
    when the name does not resolve)."""
    if isinstance(address, UnixAddress):
        await trio.lowlevel.checkpoint()
        return [(socket.AF_UNIX, address.path)]
    infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


async def open_socket(
    endpoint: Endpoint, *, send_proxy: str | None
) -> tuple[socket.socket, trio.socket.SocketType]:
    """A connected, non-blocking socket (``TCP_NODELAY`` on TCP), with the
    PROXY header of version *send_proxy* (``"v1"``, ``"v2"``) already sent:
    the plain socket (for the hot loop) and trio's wrapper of that same socket.

    Cancellation closes the socket.  :exc:`OSError` when the connect fails.
    """
    family, sockaddr = endpoint
    plain = socket.socket(family, socket.SOCK_STREAM)
    sock = trio.socket.from_stdlib_socket(plain)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await sock.connect(sockaddr)
        if send_proxy is not None:
            header = memoryview(proxy_header(send_proxy, sock))
            while header:
                header = header[await sock.send(header) :]
    except BaseException:
        sock.close()
        raise
    return plain, sock


def proxy_header(version: str, sock: trio.socket.SocketType) -> bytes:
    """The PROXY protocol header for *sock*'s own addresses (``UNKNOWN`` and
    ``LOCAL`` for a Unix socket)."""
    if sock.family == socket.AF_UNIX:
        return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_SIGNATURE + b"\x20\x00\x00\x00"
    source, destination = sock.getsockname(), sock.getpeername()
    if version == "v1":
        protocol = "TCP6" if sock.family == socket.AF_INET6 else "TCP4"
        line = f"PROXY {protocol} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
        return line.encode("ascii")
    packed = (
        ipaddress.ip_address(source[0]).packed
        + ipaddress.ip_address(destination[0]).packed
        + struct.pack("!HH", source[1], destination[1])
    )
    family = 0x21 if sock.family == socket.AF_INET6 else 0x11  # address family, STREAM
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(packed)) + packed


def tls_context(*, cafile: str | None, insecure: bool) -> ssl.SSLContext:
    """A client context: the system's CAs or *cafile*'s, or no verification at all."""
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def causes(exc: BaseException) -> Iterator[BaseException]:
    """*exc*, then what caused it, and so on (trio wraps socket errors)."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def error_kind(exc: BaseException) -> str:
    """The kind a connection that failed with *exc* is counted under
    (``refused``: an ICMP error on a UDP flow)."""
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return "tls"
        if isinstance(cause, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return "reset"
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
    if isinstance(exc, trio.BrokenResourceError):
        return "reset"
    return "error"


def error_reason(exc: BaseException) -> str:
    """Why *exc* happened, in a few words for a one-line report."""
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLError):
        return str(exc).split(" (_ssl.c:")[0]
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # trio's connect adds the address: we name it once
    return str(exc) or type(exc).__name__
