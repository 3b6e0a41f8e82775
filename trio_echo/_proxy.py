"""The PROXY protocol header (v1 text and v2 binary), parsed without I/O.

A load balancer such as HAProxy or AWS NLB connects to the server itself, so
the server's socket sees the balancer's address; with the PROXY protocol it
first sends one header naming the real client, then relays the client's bytes
unchanged.  :func:`parse_proxy_header` decides, from the bytes received so far,
whether they start with a complete, valid header; the caller owns the socket,
the size limit of its reads and the time limit.  Nothing here imports trio.

Specification: https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

import attrs

__all__ = ["MAX_HEADER", "ProxyHeader", "ProxyProtocolError", "parse_proxy_header"]

V1_PREFIX: Final = b"PROXY "
#: A v1 header is at most 107 bytes, CRLF included (the spec's own bound).
V1_MAX: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16
#: The most bytes of addresses and TLVs a v2 header may carry here.  The spec
#: allows 65535; real balancers send at most a few hundred (addresses plus a
#: few TLVs), and this bounds what one connection can make the server buffer.
V2_MAX_PAYLOAD: Final = 4096
#: No valid header is longer than this.
MAX_HEADER: Final = V2_FIXED + V2_MAX_PAYLOAD

# v2 command (low nibble of byte 13) and address family (high nibble of byte 14).
_LOCAL: Final = 0x0
_PROXY: Final = 0x1
_AF_UNSPEC: Final = 0x0
_AF_INET: Final = 0x1
_AF_INET6: Final = 0x2
_AF_UNIX: Final = 0x3
_STREAM: Final = 0x1
# Bytes of addresses and ports each family needs ahead of any TLV.
_ADDRESS_LENGTHS: Final = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes cannot start a valid PROXY header; the message says why."""


@attrs.frozen(kw_only=True)
class ProxyHeader:
    """A complete, valid PROXY header."""

    version: int
    """``1`` (text) or ``2`` (binary)."""

    source: Address | None
    """The real client as ``(host, port)``; ``None`` when the header carries no
    TCP address (v1 ``UNKNOWN``, v2 ``LOCAL`` -- a balancer's own health check --
    or a v2 family other than IPv4/IPv6): then the connection's own peer stands."""

    destination: Address | None
    """The address the client connected to on the balancer, or ``None`` as above."""

    length: int
    """How many bytes the header took; the client's own bytes start right after."""


def parse_proxy_header(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """Parse the PROXY header at the start of *data*, the bytes received so far.

    Returns:
      The header, or ``None`` when *data* is a valid but incomplete beginning:
      read more and call again with everything received.  Bytes after
      :attr:`ProxyHeader.length` belong to the client and are not looked at.

    Raises:
      ProxyProtocolError: *data* does not start with a header, the header is
        malformed, or it would be longer than :data:`MAX_HEADER` bytes.  Once
        raised for some bytes, it is raised for any bytes that extend them, so
        a caller may stop reading at the first error.

    Runs in time linear in ``min(len(data), MAX_HEADER)`` at worst.
    """
    head = bytes(data[:MAX_HEADER])
    if head[:1] == V1_PREFIX[:1]:
        return _parse_v1(head)
    if head[:1] == V2_SIGNATURE[:1] or not head:
        return _parse_v2(head)
    raise ProxyProtocolError("not a PROXY protocol header")


def _parse_v1(head: bytes) -> ProxyHeader | None:
    if not head.startswith(V1_PREFIX[: len(head)]):
        raise ProxyProtocolError("not a PROXY protocol header")
    end = head.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(head) >= V1_MAX:
            raise ProxyProtocolError(f"v1 header without CRLF in its first {V1_MAX} bytes")
        if b"\n" in head or (b"\r" in head and not head.endswith(b"\r")):
            raise ProxyProtocolError("v1 header with a stray CR or LF")
        return None
    try:
        line = head[len(V1_PREFIX) : end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    fields = line.split(" ")
    if fields[0] == "UNKNOWN":
        # The spec lets a sender put anything after UNKNOWN; the receiver ignores it.
        return ProxyHeader(version=1, source=None, destination=None, length=end + 2)
    if len(fields) != 5 or fields[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 header is not 'TCP4|TCP6 SRC DST SPORT DPORT': {line!r}")
    family, src, dst, sport, dport = fields
    version = 4 if family == "TCP4" else 6
    source = (_v1_host(src, version), _v1_port(sport))
    destination = (_v1_host(dst, version), _v1_port(dport))
    return ProxyHeader(version=1, source=source, destination=destination, length=end + 2)


def _v1_host(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 header has a bad IPv{version} address: {text!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"v1 header has a bad IPv{version} address: {text!r}")
    return str(address)


def _v1_port(text: str) -> int:
    # Digits only (int() would accept "+1", " 1" and "1_0"), no leading zero.
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or text != str(int(text)):
        raise ProxyProtocolError(f"v1 header has a bad port: {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header has a bad port: {text!r}")
    return port


def _parse_v2(head: bytes) -> ProxyHeader | None:
    if not head.startswith(V2_SIGNATURE[: len(head)]):
        raise ProxyProtocolError("not a PROXY protocol header")
    if len(head) < V2_FIXED:
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", head, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"v2 header with version {version_command >> 4}")
    command = version_command & 0xF
    if command not in (_LOCAL, _PROXY):
        raise ProxyProtocolError(f"v2 header with unknown command {command}")
    if length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(f"v2 header of {length} bytes exceeds {V2_MAX_PAYLOAD}")
    family, transport = family_transport >> 4, family_transport & 0xF
    needed = _ADDRESS_LENGTHS.get(family)
    if needed is None or transport > 2:
        raise ProxyProtocolError(f"v2 header with unknown address family 0x{family_transport:02x}")
    if length < needed:
        raise ProxyProtocolError(f"v2 header too short for its addresses ({length} < {needed})")
    total = V2_FIXED + length
    if len(head) < total:
        return None
    source = destination = None
    # LOCAL: the balancer speaking for itself; UNSPEC/UNIX/DGRAM: no TCP peer to report.
    if command == _PROXY and transport == _STREAM and family in (_AF_INET, _AF_INET6):
        size = 4 if family == _AF_INET else 16
        body = head[V2_FIXED:]
        src = ipaddress.ip_address(body[:size])
        dst = ipaddress.ip_address(body[size : 2 * size])
        sport, dport = struct.unpack_from("!HH", body, 2 * size)
        source, destination = (str(src), sport), (str(dst), dport)
    # TLVs after the addresses are allowed and ignored.
    return ProxyHeader(version=2, source=source, destination=destination, length=total)
