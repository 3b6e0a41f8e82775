"""TLS as a transport wrapping another: the server's SSL context, the handshake, close_notify.

:class:`TLSTransport` runs a :class:`trio.SSLStream` over any
:class:`~trio_echo._transports.Transport` (the plain socket, in the server)
and is a transport itself, so the echo loop does not know it is there.  Two
things differ from plain TCP:

* The handshake is explicit and bounded (:class:`TLSHandshake`, a step
  before the echo loop).  ``SSLStream`` would otherwise handshake on first
  I/O, unbounded by anything but the idle timeout; the step completes it
  within ``TLSConfig.handshake_timeout``.  A client that stays silent, speaks
  plain TCP, or offers no acceptable certificate is closed with reason
  ``tls-error`` and one INFO line; so is one that breaks the TLS record
  protocol later.  A TCP reset, or a TCP EOF without ``close_notify``, is
  ``reset``, as over plain TCP.

* The close.  TLS cannot half-close the way TCP can, so the server's side of
  a clean close (:meth:`TLSTransport.send_eof`) is ``close_notify`` followed
  by a TCP half-close, owed also after the client's own EOF; the
  connection's bounded drain then reads the raw TCP bytes until the client's
  EOF, as over TCP, so a client that reads its echoes and closes within
  ``drain_timeout`` gets no reset that could destroy echoes it has not read yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Iterator
from typing import ClassVar, Final

import trio

from ._config import TLSConfig
from ._protocol import Data
from ._reasons import TLS_ERROR
from ._transports import Ended, Owner, Transport, WaitScopes, Wrapper

__all__ = ["ServerTransport", "TLSHandshake", "TLSTransport", "server_context"]

LOGGER = logging.getLogger("trio_echo")


#: TLSConfig.min_version -> the ssl module's version.
MIN_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


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
    context.minimum_version = MIN_VERSIONS[tls.min_version]
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
    """A :class:`~trio_echo._transports.Transport` as the stream under a server's
    :class:`trio.SSLStream`, with record-aligned reads.

    :meth:`receive_some` returns whole TLS records, so the SSL object never
    holds a client record it has not decrypted yet.  Sending ``close_notify``
    calls ``SSL_shutdown`` twice; the second call reads, and if it finds
    application data -- a client that pipelined past the last round --
    OpenSSL fails with ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY`` and
    :class:`trio.SSLStream` drops the ``close_notify`` it had just built.
    With nothing buffered the second call just waits, which ``aclose``
    ignores, and the ``close_notify`` goes out.

    :meth:`aclose` (which :meth:`trio.SSLStream.aclose` calls after sending
    ``close_notify``) only half-closes the transport: the connection drains
    and closes it.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._received = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        transport = self.transport
        sent = transport.send_now(data)
        if sent != len(data):
            await transport.send_all(memoryview(data)[sent:])

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        # A record already buffered is returned without a checkpoint: the only
        # caller is the SSLStream, which checkpoints in every operation, and a
        # scheduler round trip per record costs measurable throughput.
        received = self._received
        transport = self.transport
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
            while (data := transport.try_receive()) is None:
                await transport.wait_receivable()
            if not data:
                rest = bytes(received)
                received.clear()
                return rest
            # Copied at once: the chunk may be a view of the server's shared buffer.
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
        await self.transport.send_eof()


class TLSTransport(Wrapper):
    """TLS over *transport*: the plaintext side of a server-side :class:`trio.SSLStream`.

    Translates the stream's errors at this boundary: the client breaking the
    TLS protocol raises :exc:`~trio_echo._transports.Ended` (``tls-error``,
    logged at INFO); the TCP connection breaking stays a
    :exc:`trio.BrokenResourceError` (``reset``).
    """

    #: The client's close_notify is answered, as for every other reason.
    half_close_after_eof: ClassVar[bool] = True

    def __init__(self, transport: Transport, context: ssl.SSLContext, *, max_bytes: int) -> None:
        super().__init__(transport)
        # Waking the socket under the SSLStream would break the TLS stream; a
        # cancelled receive leaves it usable for the close_notify.
        self._waits = WaitScopes()
        self._ssl = trio.SSLStream(ServerTransport(transport), context, server_side=True)
        self._max_bytes = max_bytes
        self._received: Data | None = None

    async def handshake(self) -> None:
        """Complete the handshake (unbounded: :class:`TLSHandshake` bounds it).

        Raises:
          Ended: ``tls-error``: the client failed the handshake (logged at INFO).
        """
        try:
            await self._ssl.do_handshake()
        except trio.BrokenResourceError as exc:
            LOGGER.info("%s: TLS handshake failed: %s", self._peer(), _describe(exc))
            raise Ended(TLS_ERROR) from exc

    def try_receive(self) -> Data | None:
        data, self._received = self._received, None
        return data

    def interrupt(self) -> None:
        self._waits.interrupt()

    async def wait_receivable(self) -> None:
        try:
            with self._waits.waiting():
                self._received = await self._ssl.receive_some(self._max_bytes)
        except trio.BrokenResourceError as exc:
            raise self._translate(exc) from exc.__cause__

    def send_now(self, data: Data) -> int:
        return 0

    async def send_all(self, data: Data) -> None:
        try:
            with self._waits.waiting():
                await self._ssl.send_all(data)
        except trio.BrokenResourceError as exc:
            raise self._translate(exc) from exc.__cause__

    async def send_eof(self) -> None:
        """``close_notify``, then the TCP half-close (through :class:`ServerTransport`)."""
        await self._ssl.aclose()

    # discard_until_eof, close: the inner transport's (after close_notify the
    # client's bytes are discarded undecrypted).

    def _translate(self, exc: trio.BrokenResourceError) -> BaseException:
        if not _is_protocol_error(exc):
            # A TCP reset, or a TCP EOF without close_notify.
            return exc
        LOGGER.info("%s: TLS error: %s", self._peer(), _describe(exc))
        return Ended(TLS_ERROR)

    def _peer(self) -> str:
        return "unknown peer" if self._owner is None else self._owner.peer


class TLSHandshake:
    """The step before echoing that completes a TLS handshake within *timeout*."""

    def __init__(self, transport: TLSTransport, timeout: float) -> None:
        self.transport = transport
        self.timeout = timeout

    async def run(self, owner: Owner) -> None:
        await self.transport.handshake()

    def timed_out(self, owner: Owner) -> Ended:
        LOGGER.info("%s: TLS handshake not completed in time", owner.peer)
        return Ended(TLS_ERROR)


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
