"""A TLS client over a plain trio socket through :class:`ssl.MemoryBIO`.

Unlike :class:`trio.SSLStream`, it says exactly how the server ended the
stream: a ``close_notify`` alert, a bare TCP FIN (a ragged EOF, which strict
clients report as truncation), or a reset.
"""

from __future__ import annotations

import ssl

import trio

#: How a TLS stream ended, as :meth:`MemoryBIOClient.receive_until_end` reports it.
CLOSE_NOTIFY = "close_notify"
FIN_ONLY = "fin-without-close_notify"
RESET = "reset"


class MemoryBIOClient:
    """One client connection: handshake, records sent whole, every byte until the end."""

    def __init__(self, sock: trio.SocketStream, context: ssl.SSLContext) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname="127.0.0.1")

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext) -> MemoryBIOClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port), context)
        with trio.fail_after(10):
            while True:
                try:
                    client._ssl.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await client._flush()
                    data = await client.sock.receive_some()
                    if not data:
                        raise ConnectionError("EOF during the handshake") from None
                    client._incoming.write(data)
            await client._flush()
        return client

    async def send_record(self, plaintext: bytes) -> None:
        """*plaintext* as one TLS record (at most 16 KiB)."""
        assert len(plaintext) <= 2**14
        self._ssl.write(plaintext)
        await self._flush()

    async def receive_until_end(self, limit: float = 10.0) -> tuple[bytes, str]:
        """Every plaintext byte until the stream ends, and how it ended."""
        received = bytearray()
        with trio.fail_after(limit):
            while True:
                try:
                    # b"": the close_notify alert (SSLObject.read does not raise for it).
                    if not (data := self._ssl.read(65536)):
                        return bytes(received), CLOSE_NOTIFY
                    received += data
                    continue
                except ssl.SSLZeroReturnError:
                    return bytes(received), CLOSE_NOTIFY
                except ssl.SSLEOFError:
                    return bytes(received), FIN_ONLY
                except ssl.SSLWantReadError:
                    pass
                try:
                    data = await self.sock.receive_some()
                except trio.BrokenResourceError:
                    return bytes(received), RESET
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()

    async def aclose(self) -> None:
        await self.sock.aclose()

    async def _flush(self) -> None:
        if pending := self._outgoing.read():
            await self.sock.send_all(pending)
