"""Echo over TLS: the server's SSL context and the TLS connection.

A TLS connection is a :class:`~trio_echo._connection.StreamConnection` on a
:class:`trio.SSLStream` with two differences:

* The handshake is explicit and bounded.  ``SSLListener.accept`` does not
  handshake -- the handshake would happen on first I/O, unbounded by
  anything but the idle timeout -- so the connection completes it first,
  within ``TLSConfig.handshake_timeout``.  A client that stays silent, speaks
  plain TCP, or offers no acceptable certificate is closed with reason
  ``tls-error`` and one INFO line; so is one that breaks the TLS record
  protocol later.  A TCP reset, or a TCP EOF without ``close_notify``, is
  ``reset``, as over plain TCP.

* The close.  TLS cannot half-close the way TCP can (``SSLStream`` has no
  ``send_eof``), so wherever the plain-TCP connection half-closes -- rounds
  exhausted, idle, shutdown -- and also after the client's own EOF, the TLS
  connection sends ``close_notify`` (the client reads a clean TLS EOF after
  the last echo), then half-closes TCP and discards the client's bytes until
  its TCP EOF, for at most ``drain_timeout``, then closes.  As over TCP, a
  client that reads its echoes and closes within ``drain_timeout`` gets no
  reset that could destroy echoes it has not read yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from typing import Final

import trio

from ._config import ConnectionConfig, TLSConfig
from ._connection import Connection, StreamConnection
from ._protocol import SHUTDOWN

__all__ = ["TLS_ERROR", "ServerTransport", "TLSConnection", "server_context"]

LOGGER = logging.getLogger("trio_echo")

TLS_ERROR: Final = "tls-error"


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """An SSL context serving *tls*'s certificate, requiring client
    certificates when ``client_ca`` is set.

    Raises:
      OSError: a file is missing or unreadable (the same subclass, e.g.
        :exc:`FileNotFoundError`), or :exc:`ssl.SSLError` when a file is not
        valid PEM or the key does not match the certificate; ``strerror``
        names the field and the file, e.g. ``certfile 'x.pem': No such file
        or directory``.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    files = {"certfile": tls.certfile, "keyfile": tls.keyfile, "client_ca": tls.client_ca}
    for field, path in files.items():
        if path is not None:
            with _naming(f"{field} {os.fspath(path)!r}"):
                open(path, "rb").close()
    chain = f"certfile {os.fspath(tls.certfile)!r}"
    if tls.keyfile is not None:
        chain += f" with keyfile {os.fspath(tls.keyfile)!r}"
    with _naming(chain, invalid="not a PEM certificate chain with its matching private key"):
        context.load_cert_chain(tls.certfile, tls.keyfile)
    if tls.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        with _naming(f"client_ca {os.fspath(tls.client_ca)!r}", invalid="no PEM certificates"):
            context.load_verify_locations(cafile=tls.client_ca)
    return context


@contextlib.contextmanager
def _naming(what: str, invalid: str = "") -> Iterator[None]:
    """Re-raise an OSError with *what* (the field and file) in its message."""
    try:
        yield
    except ssl.SSLError as exc:
        detail = " ".join(filter(None, [invalid, exc.reason and f"({exc.reason})"]))
        raise ssl.SSLError(exc.errno, f"{what}: {detail}") from exc
    except OSError as exc:
        raise type(exc)(exc.errno, f"{what}: {exc.strerror}") from exc


# A TLS record: 1 byte type, 2 bytes version, 2 bytes length, then the body.
RECORD_HEADER: Final = 5
# Record content types (change_cipher_spec, alert, handshake, application_data,
# heartbeat); with a major version of 3, anything else is not TLS at all.
RECORD_TYPES: Final = frozenset({20, 21, 22, 23, 24})
# The largest record body any TLS version allows (TLS 1.2's TLSCiphertext).
MAX_RECORD_BODY: Final = 2**14 + 2048


class ServerTransport(trio.abc.Stream):
    """The TCP stream under a server's :class:`trio.SSLStream`, with two duties.

    Record-aligned reads: :meth:`receive_some` returns whole TLS records, so
    the SSL object never holds a client record it has not decrypted yet.
    Sending ``close_notify`` calls ``SSL_shutdown`` twice; the second call
    reads, and if it finds application data -- a client that pipelined past
    the last round -- OpenSSL fails with ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``
    and :class:`trio.SSLStream` drops the ``close_notify`` it had just built.
    With nothing buffered the second call just waits, which ``aclose``
    ignores, and the ``close_notify`` goes out.

    Lingering close: :meth:`aclose` (which :meth:`trio.SSLStream.aclose` calls
    after sending ``close_notify``) half-closes, discards the client's bytes
    until its EOF or for at most *drain_timeout*, then closes.
    """

    def __init__(
        self, stream: trio.abc.HalfCloseableStream, drain_timeout: float, received: bytes = b""
    ) -> None:
        self.stream = stream
        self._drain_timeout = drain_timeout
        # *received*: bytes already read from *stream* (those after a PROXY header).
        self._received = bytearray(received)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        # A record already buffered is returned without a checkpoint: the only
        # caller is the SSLStream, which checkpoints in every operation, and a
        # scheduler round trip per record costs measurable throughput.
        received = self._received
        while True:
            end = self._record_end()
            if end is not None and (max_bytes is None or end <= max_bytes):
                record = received[:end]
                del received[:end]
                return record
            if max_bytes is not None and len(received) >= max_bytes:
                chunk = received[:max_bytes]
                del received[:max_bytes]
                return chunk
            data = await self.stream.receive_some()
            if not data:
                rest = bytes(received)
                received.clear()
                return rest
            received += data

    def _record_end(self) -> int | None:
        """Where the first buffered record ends, if it is all here; for bytes
        that are not a TLS record, everything buffered (OpenSSL rejects it)."""
        received = self._received
        if len(received) < RECORD_HEADER:
            return None
        length = int.from_bytes(received[3:5], "big")
        if received[0] not in RECORD_TYPES or received[1] != 3 or length > MAX_RECORD_BODY:
            return len(received)
        end = RECORD_HEADER + length
        return end if len(received) >= end else None

    async def aclose(self) -> None:
        self._received.clear()
        try:
            await self.stream.send_eof()
            with trio.move_on_after(self._drain_timeout):
                while await self.stream.receive_some():
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            LOGGER.debug("while closing: %s", exc or type(exc).__name__)
        finally:
            await self.stream.aclose()


class TLSConnection(StreamConnection):
    """A connection on a server-side :class:`trio.SSLStream` (see the module docstring).

    Cancellation:
      :meth:`stop` during the handshake abandons it (reason ``shutdown``);
      otherwise as :class:`~trio_echo._connection.Connection`.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        context: ssl.SSLContext,
        config: ConnectionConfig,
        *,
        peer: str,
        handshake_timeout: float,
        on_close: Callable[[Connection], None] | None = None,
        received: bytes = b"",
    ) -> None:
        self._tls = trio.SSLStream(
            ServerTransport(stream, config.drain_timeout, received), context, server_side=True
        )
        super().__init__(self._tls, config, peer=peer, on_close=on_close)
        self._handshake = trio.CancelScope(deadline=trio.current_time() + handshake_timeout)

    def stop(self) -> None:
        super().stop()
        self._handshake.cancel()

    # The client's close_notify is answered, as for every other reason.
    HALF_CLOSE_AFTER_EOF = True

    async def _start(self) -> str | None:
        with self._handshake:
            try:
                await self._tls.do_handshake()
            except trio.BrokenResourceError as exc:
                LOGGER.info("%s: TLS handshake failed: %s", self.peer, _describe(exc))
                return TLS_ERROR
        if self._handshake.cancelled_caught:
            if self._stopping:
                return SHUTDOWN
            LOGGER.info("%s: TLS handshake not completed in time", self.peer)
            return TLS_ERROR
        return None

    def _broken(self, exc: trio.BrokenResourceError | ConnectionError) -> str:
        if not _is_protocol_error(exc):
            # A TCP reset, or a TCP EOF without close_notify.
            return super()._broken(exc)
        LOGGER.info("%s: TLS error: %s", self.peer, _describe(exc))
        return TLS_ERROR

    async def _half_close_and_drain(self) -> None:
        """Send close_notify, then the lingering TCP close, within drain_timeout."""
        with trio.move_on_after(self._config.drain_timeout):
            try:
                await self._tls.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                LOGGER.debug("%s: while closing: %s", self.peer, exc or type(exc).__name__)


def _is_protocol_error(exc: BaseException) -> bool:
    """Whether a BrokenResourceError from SSLStream is the peer breaking TLS
    itself (bad record, bad MAC, ...) rather than the TCP connection ending."""
    cause = exc.__cause__
    return isinstance(cause, ssl.SSLError) and not isinstance(
        cause, ssl.SSLEOFError | ssl.SSLSyscallError
    )


def _describe(exc: BaseException) -> str:
    """The SSL error behind a BrokenResourceError, in one line."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause or exc) or type(cause or exc).__name__
