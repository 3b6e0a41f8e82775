"""The PROXY protocol: the sans-IO parser, and serve() with proxy_protocol on loopback."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import ssl
import struct
from pathlib import Path

import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

from trio_echo import TLSConfig
from trio_echo._proxy import (
    MAX_HEADER,
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Connect, receive_exactly, receive_until_eof, reset_on_close, wait_until


def v2(
    command: int = 1,
    family: int = 0x11,
    addresses: bytes = b"",
    *,
    version: int = 2,
    length: int | None = None,
) -> bytes:
    """A v2 header: signature, version/command, family/transport, length, payload."""
    size = len(addresses) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", version << 4 | command, family, size) + addresses


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


# ---- v1 ----


@pytest.mark.parametrize(
    ("line", "source", "destination"),
    [
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            ("192.0.2.1", 56324),
            ("198.51.100.2", 443),
        ),
        (b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n", ("2001:db8::1", 1), ("::1", 65535)),
        (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 0\r\n", ("0.0.0.0", 0), ("255.255.255.255", 0)),
        (b"PROXY UNKNOWN\r\n", None, None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None, None),
    ],
)
def test_v1_valid(
    line: bytes, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> None:
    assert parse_proxy_header(line + b"hello") == ProxyHeader(
        version=1, source=source, destination=destination, length=len(line)
    )


def test_v1_longest_header_is_accepted() -> None:
    line = (
        # The spec's worst case.
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(line) == V1_MAX
    header = parse_proxy_header(line)
    assert header is not None
    assert header.length == V1_MAX


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",
        b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",
        b"PROXY TCP5 192.0.2.1 198.51.100.2 56324 443\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",
        b"PROXY TCP6 192.0.2.1 ::1 56324 443\r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.2 56324 443\r\n",
        b"PROXY TCP4 192.0.2.01 198.51.100.2 56324 443\r\n",
        b"PROXY TCP4 example.com 198.51.100.2 56324 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +443 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 4_43 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",
        b"PROXY TCP4 192.0.2.1\r198.51.100.2 56324 443\r\n",
        b"PROXY \r\n",
        b"proxy TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        b"PROXYTCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        b"PROXY " + b"9" * 120,
        b"GET / HTTP/1.1\r\n",
        b"hello\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_v1_incomplete_needs_more() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    for end in range(len(line)):
        assert parse_proxy_header(line[:end]) is None, line[:end]


# ---- v2 ----


def test_v2_ipv4_with_tlvs_and_client_bytes() -> None:
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP, skipped
    header = v2(addresses=inet("192.0.2.1", "198.51.100.2", 56324, 443) + tlv)
    assert parse_proxy_header(header + b"client bytes") == ProxyHeader(
        version=2,
        source=("192.0.2.1", 56324),
        destination=("198.51.100.2", 443),
        length=len(header),
    )


def test_v2_ipv6() -> None:
    header = v2(family=0x21, addresses=inet("2001:db8::1", "::ffff:192.0.2.9", 1, 2))
    assert parse_proxy_header(header) == ProxyHeader(
        version=2, source=("2001:db8::1", 1), destination=("::ffff:c000:209", 2), length=52
    )


@pytest.mark.parametrize(
    ("command", "family", "payload"),
    [
        (0, 0x00, b""),  # LOCAL: a balancer's health check
        (0, 0x11, inet("192.0.2.1", "198.51.100.2", 1, 2)),  # LOCAL ignores addresses
        (1, 0x00, b"anything"),  # PROXY, UNSPEC
        (1, 0x31, b"/run/x.sock".ljust(216, b"\0")),  # AF_UNIX
        (1, 0x12, inet("192.0.2.1", "198.51.100.2", 1, 2)),  # DGRAM
    ],
)
def test_v2_without_tcp_address_keeps_the_socket_peer(
    command: int, family: int, payload: bytes
) -> None:
    header = v2(command, family, payload)
    assert parse_proxy_header(header) == ProxyHeader(
        version=2, source=None, destination=None, length=len(header)
    )


@pytest.mark.parametrize(
    "data",
    [
        v2(version=1, addresses=inet("192.0.2.1", "198.51.100.2", 1, 2)),
        v2(version=3, addresses=inet("192.0.2.1", "198.51.100.2", 1, 2)),
        v2(command=2, addresses=inet("192.0.2.1", "198.51.100.2", 1, 2)),
        v2(family=0x41, addresses=inet("192.0.2.1", "198.51.100.2", 1, 2)),
        v2(family=0x13, addresses=inet("192.0.2.1", "198.51.100.2", 1, 2)),
        v2(family=0x11, addresses=b"\0" * 11),
        v2(family=0x21, addresses=inet("192.0.2.1", "198.51.100.2", 1, 2)),
        v2(length=V2_MAX_PAYLOAD + 1),
        v2(length=65535),
        V2_SIGNATURE[:11] + b"X" + b"\0" * 20,
        b"\r\n\r\nGET",
    ],
)
def test_v2_malformed(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def test_v2_incomplete_needs_more() -> None:
    header = v2(addresses=inet("192.0.2.1", "198.51.100.2", 1, 2) + b"\x04\x00\x00")
    for end in range(len(header)):
        assert parse_proxy_header(header[:end]) is None


def test_v2_largest_payload_is_accepted() -> None:
    header = v2(family=0x00, addresses=b"\0" * V2_MAX_PAYLOAD)
    assert len(header) == MAX_HEADER
    assert parse_proxy_header(header + b"x") == ProxyHeader(
        version=2, source=None, destination=None, length=MAX_HEADER
    )


@pytest.mark.parametrize("data", [b"\x00", b"x", b"\x16\x03\x01", b" PROXY"])
def test_anything_else_is_not_a_header(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        parse_proxy_header(data)


def test_empty_input_needs_more() -> None:
    assert parse_proxy_header(b"") is None


# ---- properties ----

_prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY UNKNOWN", V2_SIGNATURE])


@given(prefix=_prefixes, tail=st.binary(max_size=MAX_HEADER + 100))
def test_fuzz_never_crashes_and_is_bounded(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    try:
        header = parse_proxy_header(data)
    except ProxyProtocolError:
        return
    if header is None:
        # Incomplete is only possible while a valid header could still fit.
        assert len(data) < MAX_HEADER
    else:
        assert 0 < header.length <= min(len(data), MAX_HEADER)
        assert header.version in (1, 2)


@given(
    prefix=_prefixes,
    tail=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=5),
)
def test_fuzz_split_reads_agree_with_one_read(prefix: bytes, tail: bytes, cuts: list[int]) -> None:
    """Feeding a growing buffer gives the same answer as the whole buffer at once,
    and an error never turns into success with more bytes."""
    data = prefix + tail
    try:
        whole: ProxyHeader | str | None = parse_proxy_header(data)
    except ProxyProtocolError:
        whole = "error"
    for cut in sorted(cuts):
        try:
            partial: ProxyHeader | str | None = parse_proxy_header(data[:cut])
        except ProxyProtocolError:
            partial = "error"
        if partial is not None:
            assert partial == whole


@given(
    src=st.ip_addresses(v=4),
    dst=st.ip_addresses(v=4),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    after=st.binary(max_size=50),
)
def test_fuzz_v1_and_v2_round_trip(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    sport: int,
    dport: int,
    after: bytes,
) -> None:
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    binary = v2(addresses=inet(str(src), str(dst), sport, dport))
    for header, version in ((line, 1), (binary, 2)):
        assert parse_proxy_header(header + after) == ProxyHeader(
            version=version,
            source=(str(src), sport),
            destination=(str(dst), dport),
            length=len(header),
        )


# ---- serve() with proxy_protocol, over loopback ----


async def test_proxied_connection_echoes_bytes_after_header_and_logs_real_client(
    connect: Connect, echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = await echo_server_factory(proxy_protocol=True, framing="line", rounds=2)
    client = await connect(server)
    # The header and the client's first bytes arrive in one segment.
    await client.send_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 9999\r\none\ntw")
    await client.send_all(b"o\nthree\n")
    assert await receive_until_eof(client) == b"one\ntwo\n"
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"rounds": 1}
    assert "closed 203.0.113.7:40000: rounds=2" in caplog.text


async def test_proxied_v2_header_then_more_than_max_message(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(proxy_protocol=True, max_message=4)
    client = await connect(server)
    payload = bytes(range(256)) * 4
    await client.send_all(v2(addresses=inet("::1", "::1", 1, 2), family=0x21) + payload)
    await client.send_eof()
    assert await receive_until_eof(client) == payload
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().bytes_in == len(payload)


@pytest.mark.parametrize(
    "sent",
    [
        b"hello world\r\n",  # no header at all
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nsecret",  # malformed
        b"PROXY " + b"A" * 200,  # too long
        b"PROXY TCP4 1.2.3.4",  # cut short by EOF
    ],
)
async def test_bad_header_closes_with_proxy_error_and_echoes_nothing(
    connect: Connect,
    echo_server_factory: EchoServerFactory,
    caplog: pytest.LogCaptureFixture,
    sent: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = await echo_server_factory(proxy_protocol=True)
    client = await connect(server)
    await client.send_all(sent)
    await client.send_eof()
    try:
        echoed = await receive_until_eof(client)
    except trio.BrokenResourceError:
        echoed = b""  # closed with our bytes unread: a reset, equally nothing echoed
    assert echoed == b""
    await wait_until(lambda: server.statistics().closed == 1)
    stats = server.statistics()
    assert (stats.closed_by_reason, stats.bytes_out) == ({"proxy-error": 1}, 0)
    assert "bad PROXY header" in caplog.text
    assert "reason=proxy-error" in caplog.text


async def test_silent_client_is_closed_after_proxy_timeout(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(proxy_protocol=True, proxy_timeout=0.2)
    client = await connect(server)
    await client.send_all(b"PROXY TCP4 ")  # then nothing more
    with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
        assert await receive_until_eof(client) == b""
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"proxy-error": 1}


async def test_reset_during_header_is_a_reset(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:

    server = await echo_server_factory(proxy_protocol=True)
    client = await connect(server)
    await client.send_all(b"PROXY TCP4 ")
    reset_on_close(client.socket)
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"reset": 1}


async def test_health_check_header_keeps_socket_peer(
    connect: Connect, echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = await echo_server_factory(proxy_protocol=True)
    client = await connect(server)
    port = client.socket.getsockname()[1]
    await client.send_all(v2(command=0, family=0x00) + b"ping")
    await client.send_eof()
    assert await receive_until_eof(client) == b"ping"
    await wait_until(lambda: server.statistics().closed == 1)
    assert f"closed 127.0.0.1:{port}:" in caplog.text


async def test_shutdown_during_header_closes_with_shutdown(
    connect: Connect, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(proxy_protocol=True, proxy_timeout=60, grace=0)
    client = await connect(server)
    await client.send_all(b"PROXY TCP4 ")
    await wait_until(lambda: server.statistics().accepted == 1)
    # Open while it sends its header: accepted == closed + active holds throughout.
    assert (server.statistics().active, server.statistics().closed) == (1, 0)
    await server.shutdown()
    assert server.statistics().closed_by_reason == {"shutdown": 1}


class _HeaderFirst(trio.abc.Stream):
    """A client transport that puts *header* in front of its first write, so the
    PROXY header and the TLS ClientHello share one segment (as HAProxy may send)."""

    def __init__(self, stream: trio.SocketStream, header: bytes) -> None:
        self.stream = stream
        self._header = header

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        header, self._header = self._header, b""
        await self.stream.send_all(header + bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_proxy_header_then_tls_handshake_in_the_same_segment(
    echo_server_factory: EchoServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile = tmp_path / "cert.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = TLSConfig(certfile=certfile, keyfile=tmp_path / "key.pem")
    server = await echo_server_factory(tls=tls, proxy_protocol=True)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
    header = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n"
    client = trio.SSLStream(_HeaderFirst(tcp, header), context, server_hostname="127.0.0.1")
    with trio.fail_after(10):
        await client.do_handshake()
        await client.send_all(b"over TLS")
        assert await receive_exactly(client, 8) == b"over TLS"
        await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"eof": 1}
    assert "closed [2001:db8::7]:4242: rounds=1" in caplog.text
