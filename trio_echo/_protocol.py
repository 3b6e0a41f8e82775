"""The echo protocol as a state machine that does no I/O (sans-IO, as in h11).

The connection loop feeds it whatever the socket returns and sends whatever it
hands back; the protocol decides what a message is, counts rounds, and says
when the connection is done and why.  Nothing here imports trio, so every rule
can be tested synchronously and byte-exactly.
"""

from __future__ import annotations

from typing import Final, cast

from ._reasons import EOF, LINE_TOO_LONG, ROUNDS, SHUTDOWN

__all__ = ["EchoProtocol"]


Data = bytes | bytearray | memoryview

_EMPTY: Final = b""


class EchoProtocol:
    """Echo state for one connection.

    Call :meth:`receive_data` with each chunk read from the peer and send what
    it returns, in order; call :meth:`receive_eof` when the peer half-closes,
    or :meth:`finish` to stop early (graceful shutdown).  Once :attr:`reason`
    is set the connection is done: send what the last call returned, then
    half-close.  Feeding a finished protocol is a caller bug and raises
    :exc:`RuntimeError`.  It does no I/O and never blocks, so there is nothing
    to cancel: drive it from any event loop, or none.

    Framing:
      ``raw``: each chunk is one message. ``line``: each line ending in
      ``b"\\n"`` is one message, echoed with its newline; lines are reassembled
      across chunks and one chunk may hold several.

    Limits:
      With ``rounds=N`` exactly the first *N* messages are echoed and anything
      after them is never returned.  In ``line`` framing a partial line is
      buffered until at most ``max_message`` bytes; reaching that without a
      newline ends the connection with reason ``line-too-long`` (the complete
      lines before it are still returned), so the buffer never exceeds
      ``max_message`` plus one chunk.
    """

    __slots__ = ("_line", "_max_message", "_pending", "_remaining", "reason", "rounds")

    def __init__(self, *, framing: str, rounds: int | None, max_message: int) -> None:
        self._line = framing == "line"
        self._max_message = max_message
        # Rounds still allowed; None is unlimited.
        self._remaining = rounds
        # The partial line carried over from earlier chunks (line framing only).
        # Created only when a partial line must be kept (line framing).
        self._pending: bytearray | bytes = _EMPTY
        #: Messages handed out for echoing so far.
        self.rounds = 0
        #: Why the connection is done, or ``None`` while it is open.
        self.reason: str | None = None

    @property
    def buffered(self) -> int:
        """How many received bytes are held back waiting for the end of a line."""
        return len(self._pending)

    def receive_data(self, data: Data) -> Data:
        """Take one chunk from the peer; return the bytes to echo now (maybe empty).

        Raises:
          RuntimeError: if the protocol is already done.
          ValueError: if *data* is empty (use :meth:`receive_eof` for EOF).
        """
        if self.reason is not None or not data:
            self._check_open()
            raise ValueError("receive_data() needs data; call receive_eof() at EOF")
        if self._line:
            return self._receive_lines(data)
        # raw framing, inline: this is the hot path of the default configuration.
        self.rounds += 1
        remaining = self._remaining
        if remaining is not None:
            self._remaining = remaining = remaining - 1
            if remaining == 0:
                self.reason = ROUNDS
        return data

    def receive_eof(self) -> Data:
        """The peer half-closed: return the last bytes to echo (a trailing partial line).

        Raises:
          RuntimeError: if the protocol is already done.
        """
        return self._close(EOF)

    def finish(self) -> Data:
        """Stop early (server shutdown): return the buffered partial line, if any,
        so that every byte already read is echoed.

        Raises:
          RuntimeError: if the protocol is already done.
        """
        return self._close(SHUTDOWN)

    def _check_open(self) -> None:
        if self.reason is not None:
            raise RuntimeError(f"the connection is already done ({self.reason})")

    def _receive_lines(self, data: Data) -> Data:
        pending = self._pending
        # The pending partial line holds no newline, so only the new bytes are
        # searched: a client trickling one byte at a time cannot make this quadratic.
        start = len(pending)
        if start:
            pending = cast(bytearray, pending)  # _keep_partial made it
            pending += data
            chunk: bytes | bytearray = pending
        else:
            chunk = data if isinstance(data, bytes) else bytes(data)
        # One C-level scan for the last newline and one count, rather than a
        # Python-level loop per line: a chunk of many short lines stays cheap.
        end = chunk.rfind(b"\n", start) + 1
        too_long = False
        if end > self._max_message:
            # Only a chunk longer than max_message can hold a line that is.
            fitting = _end_of_fitting_lines(chunk, start, end, self._max_message)
            too_long = fitting < end
            end = fitting
        out: Data = _EMPTY
        if end:
            lines = chunk.count(b"\n", start, end)
            remaining = self._remaining
            if remaining is not None:
                if lines >= remaining:
                    end = _end_of_line(chunk, remaining)
                    lines = remaining
                    self.reason = ROUNDS
                self._remaining = remaining - lines
            self.rounds += lines
            # A chunk of whole lines (the usual case) is echoed without a copy.
            out = chunk if end == len(chunk) and chunk is not pending else bytes(chunk[:end])
        if self.reason is not None:
            self._pending = _EMPTY
        elif too_long:
            self._fail_line_too_long()
        else:
            self._keep_partial(chunk, end)
        return out

    def _keep_partial(self, chunk: bytes | bytearray, end: int) -> None:
        if isinstance(chunk, bytearray):  # the pending buffer, grown in place
            if end == len(chunk):
                self._pending = _EMPTY  # an idle connection keeps no buffer
            else:
                del chunk[:end]
        elif end < len(chunk):
            self._pending = bytearray(chunk[end:])
        # A line that cannot fit in max_message can never be echoed whole.
        if len(self._pending) >= self._max_message:
            self._fail_line_too_long()

    def _fail_line_too_long(self) -> None:
        self.reason = LINE_TOO_LONG
        self._pending = _EMPTY

    def _close(self, reason: str) -> Data:
        self._check_open()
        self.reason = reason
        if not self._pending:
            return _EMPTY
        out = bytes(self._pending)
        self._pending = _EMPTY
        self.rounds += 1
        if self._remaining is not None:
            self._remaining -= 1
        return out


def _end_of_fitting_lines(chunk: bytes | bytearray, start: int, end: int, limit: int) -> int:
    """The offset just past the last complete line of ``chunk[:end]`` that comes
    before any line longer than *limit* (*end* if every line fits).

    The first newline is searched from *start*, since the bytes before it are a
    partial line known to hold none.
    """
    line_start = 0
    newline = chunk.find(b"\n", start, end)
    while newline != -1:
        if newline + 1 - line_start > limit:
            return line_start
        line_start = newline + 1
        if end - line_start <= limit:
            return end
        newline = chunk.find(b"\n", line_start, end)
    return end  # pragma: no cover - chunk[end - 1] is a newline


def _end_of_line(chunk: bytes | bytearray, n: int) -> int:
    """The offset just past the *n*-th newline of *chunk* (which has at least *n*)."""
    end = 0
    for _ in range(n):
        end = chunk.index(b"\n", end) + 1
    return end
