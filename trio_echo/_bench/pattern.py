"""The bytes each connection sends, and the check of every byte echoed (sans-IO).

All connections share one :class:`Pattern`: a ring of messages of printable
ASCII, each ending in a newline (so line-framed echo servers echo them too;
one-byte messages are not newlines).
Consecutive bytes always differ, so a byte dropped or added anywhere shifts
everything after it and is caught at once.  Each connection starts at its own
message in the ring, so a server that mixes up connections is caught too.  A
:class:`Verifier` follows one connection's stream of echoes and raises
:exc:`EchoMismatch` at the first byte that differs from what was sent.
"""

from __future__ import annotations

from typing import Final, NoReturn

__all__ = ["EchoMismatch", "Pattern", "Verifier", "show_byte"]

#: Printable ASCII without the space: readable in a packet capture or a terminal.
ALPHABET: Final = bytes(range(33, 127))
#: Bytes of pattern to cycle through at least (fewer distinct messages would
#: let a server that repeats an old message pass).
MIN_RING: Final = 65536  # >= MAX_CHUNK: one wrap-around copy suffices
#: Largest chunk verified in one call (the receive buffer size of the loops).
MAX_CHUNK: Final = 65536
# Messages up to this size are kept as copies in Pattern.each (at most
# 64 KiB plus 33 bytes of object per message), larger ones as views.
_COPY_UP_TO: Final = 4096
# Connections start this many messages apart in the ring (odd: all distinct
# while fewer connections than messages in the ring).
_STRIDE: Final = 37


class EchoMismatch(Exception):
    """An echoed byte differs from the byte sent, or came with none sent; the
    message is the one line the bench prints.  For a stream, ``offset`` and
    ``received`` say which byte of the connection's echoes it was and what
    came (``None`` for a UDP datagram: its line says)."""

    def __init__(
        self, line: str, *, offset: int | None = None, received: int | None = None
    ) -> None:
        super().__init__(line)
        self.offset = offset
        self.received = received


def _sequence(length: int) -> bytes:
    """*length* bytes of the alphabet, no two neighbours equal, and no
    stretch repeating within 94 * 94 * 93 bytes: block *k* of 94 bytes is the
    alphabet rotated by ``k + k // 93`` (neighbouring blocks differ by one or
    two places, so the byte across a block boundary changes too)."""
    size = len(ALPHABET)
    rotations = [ALPHABET[shift:] + ALPHABET[:shift] for shift in range(size)]
    blocks = -(-length // size)
    return b"".join(rotations[(k + k // (size - 1)) % size] for k in range(blocks))[:length]


class Pattern:
    """The messages of *size* bytes that every connection sends, read-only."""

    __slots__ = ("data", "each", "messages", "ring", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1 byte; got {size}")
        self.size = size
        #: Distinct messages in the ring (at least 2).
        self.messages = max(2, -(-MIN_RING // size))
        length = self.messages * size
        ring = bytearray(_sequence(length))
        if size > 1:
            ring[size - 1 :: size] = b"\n" * self.messages
        #: The ring, then its first MAX_CHUNK bytes again: any chunk at any
        #: offset is one contiguous slice.
        self.ring = len(ring)
        self.data = bytes(ring + ring[:MAX_CHUNK])
        # Every message of the ring, ready to send: handing one out is then an
        # index, not a slice.  Small ones are copies (a memoryview object is
        # larger than a short message), large ones views of ``data``.
        source = self.data if size <= _COPY_UP_TO else memoryview(self.data)
        #: The ring's messages in order, as bytes or read-only views.
        self.each: list[bytes | memoryview] = [
            source[start : start + size] for start in range(0, self.ring, size)
        ]

    def start(self, connection: int) -> int:
        """Where in the ring the stream of connection number *connection* starts."""
        return (connection * _STRIDE % self.messages) * self.size


def show_byte(byte: int) -> str:
    """*byte* as a mismatch line shows it: ``0x41 (A)``, ``0x0a ('\\n')``."""
    shown = chr(byte) if 32 < byte < 127 else repr(chr(byte))[1:-1]
    return f"0x{byte:02x} ({shown})" if 32 < byte < 127 else f"0x{byte:02x} ('{shown}')"


class Verifier:
    """One connection's stream: the next message to send and the check of each echo.

    ``sent`` counts the bytes of the messages handed out by :meth:`next_message`
    (whether or not the socket took them all yet), ``received`` the bytes
    verified; the difference is the echo still outstanding.
    """

    __slots__ = (
        "_data",
        "_each",
        "_expect",
        "_next",
        "_ring",
        "_size",
        "connection",
        "received",
        "sent",
    )

    def __init__(self, pattern: Pattern, connection: int) -> None:
        self._data = pattern.data
        self._size = pattern.size
        self._ring = pattern.ring
        self._each = pattern.each
        # Ring offsets are kept (not recomputed with a modulo): both methods are hot.
        #: The next message to send, as an index into ``pattern.each``.
        self._next = pattern.start(connection) // pattern.size
        #: The ring offset of the next byte expected back.
        self._expect = pattern.start(connection)
        self.connection = connection
        self.sent = 0
        self.received = 0

    def next_message(self) -> bytes | memoryview:
        """The next message to send (shared by every connection: read-only)."""
        index = self._next
        self._next = index + 1 if index + 1 < len(self._each) else 0
        self.sent += self._size
        return self._each[index]

    def check(self, data: bytes | bytearray | memoryview) -> int:
        """Verify *data* (at most :data:`MAX_CHUNK` bytes), the next bytes
        echoed; return how many messages' echoes they complete.

        Raises :exc:`EchoMismatch` naming the connection, the byte's offset in
        the connection's stream of echoes, and the expected and received byte.
        """
        n = len(data)
        received = self.received
        # bytes.startswith compares with memcmp; comparing memoryviews goes
        # element by element, eight times slower for 1 KiB.
        if n > self.sent - received or not self._data.startswith(data, self._expect):
            self._mismatch(data)
        self.received = received + n
        end = self._expect + n
        self._expect = end if end < self._ring else end - self._ring
        size = self._size
        return (received + n) // size - received // size

    def _mismatch(self, data: bytes | bytearray | memoryview) -> NoReturn:
        """Raise the :exc:`EchoMismatch` for *data*, which failed :meth:`check`."""
        n = len(data)
        offset = self._expect
        allowed = min(n, self.sent - self.received)
        expected = self._data[offset : offset + allowed]
        index = next((i for i in range(allowed) if expected[i] != data[i]), allowed)
        offset, received = self.received + index, data[index]
        if index < allowed:
            expected_byte = show_byte(expected[index])
        else:
            expected_byte = f"no byte (only {self.sent} sent)"
        raise EchoMismatch(
            f"connection {self.connection}: byte {offset}: "
            f"expected {expected_byte}, received {show_byte(received)}",
            offset=offset,
            received=received,
        )

    @property
    def size(self) -> int:
        """Bytes per message."""
        return self._size

    @property
    def outstanding(self) -> int:
        """Bytes sent (or being sent) whose echo has not come back yet."""
        return self.sent - self.received
