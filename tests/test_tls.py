"""Echo over TLS: end to end over loopback with trustme certificates."""

from __future__ import annotations

import logging
import re
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509

from trio_echo import EchoServer, TLSConfig, serve
from trio_echo._streams import StreamTransport
from trio_echo._tls import ServerTransport
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import (
    Certificates,
    Spawn,
    StartProcess,
    make_config,
    receive_exactly,
    receive_until_eof,
    wait_until,
)
from .processes import TRIO_ECHO


async def open_tls(
    server: EchoServer, context: ssl.SSLContext, limit: float = 10.0
) -> trio.SSLStream[trio.SocketStream]:
    with trio.fail_after(limit):
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", server.port, ssl_context=context)
        await stream.do_handshake()
    return stream


async def test_echo_over_tls_then_client_close_notify(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls())
    client = await open_tls(server, certificates.client_context())
    payload = bytes(range(256)) * 100
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        assert await receive_exactly(client, len(payload)) == payload
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    stats = server.statistics()
    assert stats.closed_by_reason == {"eof": 1}
    assert stats.bytes_in == stats.bytes_out == len(payload)


async def test_rounds_exhausted_is_close_notify_then_tcp_fin(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls(), rounds=3, framing="line")
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"a\nb\nc\nd\ne\n")
    # A clean TLS EOF (close_notify): a ragged or reset close would raise
    # BrokenResourceError instead.
    assert await receive_until_eof(client) == b"a\nb\nc\n"
    # Under TLS, the TCP stream ends with a FIN, not a reset, and the server
    # keeps draining until the client closes.
    with trio.fail_after(10):
        assert await client.transport_stream.receive_some() == b""
    assert server.statistics().active == 1
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"rounds": 1}


async def test_pipelining_far_beyond_rounds_over_tls_never_resets(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls(), rounds=2, framing="line")
    client = await open_tls(server, certificates.client_context())
    # Far more than the socket buffers hold: the server must drain the surplus.
    with trio.fail_after(10):
        await client.send_all(b"x\n" * 300_000)
    assert await receive_until_eof(client) == b"x\nx\n"
    await client.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"rounds": 1}


async def test_graceful_shutdown_over_tls_echoes_partial_line_then_eof(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls(), framing="line")
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"done\nhalf a li")
    assert await receive_exactly(client, 5) == b"done\n"
    await wait_until(lambda: server.statistics().bytes_in == 14)
    server.request_shutdown()
    assert await receive_until_eof(client) == b"half a li"
    await client.aclose()
    with trio.fail_after(5):
        await server.wait_stopped()
    assert server.statistics().closed_by_reason == {"shutdown": 1}


async def test_silent_client_is_closed_after_handshake_timeout(
    certificates: Certificates,
    echo_server_factory: EchoServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = await echo_server_factory(tls=certificates.tls(handshake_timeout=0.3))
    silent = await trio.open_tcp_stream("127.0.0.1", server.port)
    started = trio.current_time()
    # Closed with a FIN, at the handshake timeout, not the 300 s idle timeout.
    assert await receive_until_eof(silent, limit=5) == b""
    assert trio.current_time() - started < 3
    await silent.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"tls-error": 1}
    assert "TLS handshake not completed in time" in caplog.text


async def test_plain_tcp_client_on_tls_port_gets_clean_close_and_server_carries_on(
    certificates: Certificates,
    echo_server_factory: EchoServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = await echo_server_factory(tls=certificates.tls())
    plain = await trio.open_tcp_stream("127.0.0.1", server.port)
    await plain.send_all(b"GET / HTTP/1.0\r\n\r\n")
    with trio.fail_after(5):
        # The server may answer with a TLS alert before it closes; it must close.
        while await plain.receive_some():
            pass
    await plain.aclose()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"tls-error": 1}
    assert re.search(r"TLS handshake failed: \S+", caplog.text)
    assert "Traceback" not in caplog.text
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"still fine")
    assert await receive_exactly(client, 10) == b"still fine"
    await client.aclose()


async def test_client_certificates_required_with_client_ca(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls(client_ca=certificates.ca_file))
    anonymous = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", server.port),
        certificates.client_context(),
        server_hostname="127.0.0.1",
    )

    async def talk() -> None:
        # TLS 1.3: the client may finish its side of the handshake before the
        # server's rejection arrives; the first read then fails.
        await anonymous.do_handshake()
        await anonymous.send_all(b"x")
        await anonymous.receive_some()

    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await talk()
    await trio.aclose_forcefully(anonymous)
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"tls-error": 1}

    context = certificates.client_context()
    certificates.ca.issue_cert("client@example.org").configure_cert(context)
    client = await open_tls(server, context)
    await client.send_all(b"signed")
    assert await receive_exactly(client, 6) == b"signed"
    await client.aclose()


async def test_shutdown_during_handshake_closes_with_reason_shutdown(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls(handshake_timeout=60))
    silent = await trio.open_tcp_stream("127.0.0.1", server.port)
    await wait_until(lambda: server.statistics().active == 1)
    with trio.fail_after(5):
        await server.shutdown()
    assert server.statistics().closed_by_reason == {"shutdown": 1}
    await silent.aclose()


@pytest.mark.parametrize("field", ["certfile", "keyfile", "client_ca"])
async def test_missing_tls_file_raises_naming_the_field(
    certificates: Certificates, field: str, tmp_path: Path
) -> None:
    tls = certificates.tls(**{field: tmp_path / "missing.pem"})
    with pytest.raises(FileNotFoundError, match=f"{field} '.*missing.pem'"):
        await serve(make_config(tls=tls))


async def test_mismatched_key_raises_ssl_error(certificates: Certificates, tmp_path: Path) -> None:
    other_key = tmp_path / "other.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(ssl.SSLError, match="not a PEM certificate chain with its matching"):
        await serve(make_config(tls=certificates.tls(keyfile=other_key)))


@pytest.mark.system
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_cli_over_tls_with_openssl_s_client(
    certificates: Certificates, echo_process: StartProcess
) -> None:
    server = echo_process(
        "--certfile",
        str(certificates.certfile),
        "--keyfile",
        str(certificates.keyfile),
        "--rounds",
        "2",
        "--framing",
        "line",
    )
    # -quiet implies -ign_eof: s_client exits only when the server closes,
    # which it does after the second round.
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-CAfile",
            str(certificates.ca_file),
            "-verify_return_error",
            "-quiet",
        ],
        input=b"hello\nworld\nnot echoed\n",
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\nworld\n"
    match = server.wait_for(re.compile(r"closed \S+: rounds=(\d+) .* reason=(\S+)"))
    assert match.group(1, 2) == ("2", "rounds")
    status, log = server.stop(), server.log
    assert status == 0
    assert "Traceback" not in log


async def test_broken_records_after_handshake_close_with_tls_error(
    certificates: Certificates,
    echo_server_factory: EchoServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = await echo_server_factory(tls=certificates.tls())
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"fine")
    assert await receive_exactly(client, 4) == b"fine"
    # An application-data record whose ciphertext is garbage: bad MAC.
    await client.transport_stream.send_all(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"tls-error": 1}
    assert re.search(r"TLS error: \S+", caplog.text)
    await trio.aclose_forcefully(client)


async def test_tcp_eof_without_close_notify_is_a_reset(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(tls=certificates.tls())
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"bye")
    assert await receive_exactly(client, 3) == b"bye"
    await client.transport_stream.send_eof()
    await wait_until(lambda: server.statistics().closed == 1)
    assert server.statistics().closed_by_reason == {"reset": 1}
    await trio.aclose_forcefully(client)


async def test_handshake_timeout_frees_the_connection_slot(
    certificates: Certificates, echo_server_factory: EchoServerFactory
) -> None:
    server = await echo_server_factory(
        tls=certificates.tls(handshake_timeout=0.3), max_connections=1
    )
    silent = await trio.open_tcp_stream("127.0.0.1", server.port)
    await wait_until(lambda: server.statistics().active == 1)
    # Waits in the backlog until the silent client's handshake times out.
    client = await open_tls(server, certificates.client_context())
    await client.send_all(b"my turn")
    assert await receive_exactly(client, 7) == b"my turn"
    assert server.statistics().closed_by_reason == {"tls-error": 1}
    await client.aclose()
    await silent.aclose()


# ---- ServerTransport: whole records up, half-close down ----


def record(body: bytes, kind: int = 23) -> bytes:
    return bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body


async def test_transport_returns_whole_records_however_they_arrive() -> None:
    server_side, client_side = trio.testing.memory_stream_pair()
    transport = ServerTransport(StreamTransport(server_side, max_bytes=65536))
    first, second = record(b"a" * 300), record(b"b" * 10, kind=22)
    await client_side.send_all(first[:2])
    await client_side.send_all(first[2:100])
    await client_side.send_all(first[100:] + second + record(b"c")[:3])
    assert await transport.receive_some() == first
    assert await transport.receive_some() == second
    # A partial record at EOF is handed over as it is, then EOF.
    await client_side.send_eof()
    assert await transport.receive_some() == record(b"c")[:3]
    assert await transport.receive_some() == b""


async def test_transport_honours_max_bytes_and_passes_non_tls_through() -> None:
    server_side, client_side = trio.testing.memory_stream_pair()
    transport = ServerTransport(StreamTransport(server_side, max_bytes=65536))
    big = record(b"x" * 100)
    await client_side.send_all(big)
    assert await transport.receive_some(50) == big[:50]
    assert await transport.receive_some(50) == big[50:100]
    assert await transport.receive_some() == big[100:]
    await client_side.send_all(b"GET / HTTP/1.1\r\n")
    assert await transport.receive_some() == b"GET / HTTP/1.1\r\n"


async def test_transport_close_half_closes_and_leaves_the_drain_to_the_connection() -> None:
    server_side, client_side = trio.testing.memory_stream_pair()
    transport = ServerTransport(StreamTransport(server_side, max_bytes=65536))
    await transport.aclose()
    assert await client_side.receive_some() == b""  # the half-close
    # Still open: the connection's bounded drain reads what the client sends.
    await client_side.send_all(b"late bytes")
    assert await server_side.receive_some() == b"late bytes"


# ---- hardening (issue 16): --tls-min-version, reloading the certificate ----


def _client_context(ca: trustme.CA, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if maximum is not None:
        context.maximum_version = maximum
    return context


async def _serial_and_echo(
    port: int, context: ssl.SSLContext
) -> tuple[int, trio.SSLStream[trio.SocketStream]]:
    """Open a TLS connection; the server certificate's serial number, and the stream."""
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(raw, context, server_hostname="127.0.0.1")
    await stream.do_handshake()
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number, stream


@pytest.mark.parametrize(
    ("minimum", "client_max", "served"),
    [("1.2", ssl.TLSVersion.TLSv1_2, True), ("1.3", ssl.TLSVersion.TLSv1_2, False)],
)
async def test_tls_min_version(
    echo_server_factory: EchoServerFactory,
    certificates: Certificates,
    minimum: str,
    client_max: ssl.TLSVersion,
    served: bool,
) -> None:
    server = await echo_server_factory(tls=certificates.tls(min_version=minimum), rounds=1)
    context = _client_context(certificates.ca, maximum=client_max)
    raw = await trio.open_tcp_stream("127.0.0.1", server.port)
    client = trio.SSLStream(raw, context, server_hostname="127.0.0.1")
    if served:
        await client.send_all(b"x")
        assert await receive_until_eof(client) == b"x"
    else:
        with pytest.raises(trio.BrokenResourceError):
            await client.do_handshake()
        await wait_until(lambda: server.statistics().closed_by_reason == {"tls-error": 1})
    await trio.aclose_forcefully(client)


def _issue(ca: trustme.CA, where: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = where / "cert.pem", where / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


async def test_reload_tls_serves_the_new_certificate_and_keeps_open_connections(
    echo_server_factory: EchoServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    certfile, keyfile = _issue(ca, tmp_path)
    server = await echo_server_factory(tls=TLSConfig(certfile=certfile, keyfile=keyfile))
    context = _client_context(ca)
    old_serial, old = await _serial_and_echo(server.port, context)
    _issue(ca, tmp_path)  # new files in place
    assert server.reload_tls() is True
    new_serial, new = await _serial_and_echo(server.port, context)
    assert new_serial != old_serial
    # The connection opened before the reload goes on echoing.
    for stream in (old, new):
        await stream.send_all(b"still here")
        assert await receive_exactly(stream, 10) == b"still here"
    # A bad new file: logged, and the certificate in use is kept.
    certfile.write_text("not a certificate")
    with caplog.at_level(logging.ERROR, logger="trio_echo"):
        assert server.reload_tls() is False
    assert "TLS reload failed, keeping the certificate in use: certfile" in caplog.text
    kept_serial, kept = await _serial_and_echo(server.port, context)
    assert kept_serial == new_serial
    for stream in (old, new, kept):
        await trio.aclose_forcefully(stream)


async def test_reload_tls_without_tls_is_a_warning(
    echo_server_factory: EchoServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_server_factory()
    assert server.reload_tls() is False
    assert "does not serve TLS" in caplog.text


@pytest.mark.system
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_reloads_the_certificate(spawn: Spawn, tmp_path: Path, workers: str) -> None:
    ca = trustme.CA()
    certfile, keyfile = _issue(ca, tmp_path)
    server = spawn(
        [
            TRIO_ECHO,
            "--port",
            "0",
            "--workers",
            workers,
            "--certfile",
            str(certfile),
            "--keyfile",
            str(keyfile),
        ]
    )
    if workers == "1":
        port = int(server.wait_for(r"listening on \S+:(\d+)")[1])
    else:
        port = int(server.wait_for(r"starting 2 workers on \S+:(\d+)")[1])
        for number in (1, 2):
            server.wait_for(rf"\[worker {number}\] listening on")
    context = _client_context(ca)

    def serial() -> int:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    before = serial()
    _issue(ca, tmp_path)
    server.signal(signal.SIGHUP)
    for _ in range(int(workers)):
        server.wait_for("TLS certificate reloaded")
    assert serial() != before
    server.signal(signal.SIGTERM)
    status, log = server.finish()
    assert status == 0, log
    assert "Traceback" not in log
