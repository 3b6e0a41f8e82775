"""The one echo loop: a connection over a transport, from its first step to its clean close.

One :class:`Connection` per accepted client.  It runs the steps before echoing
(a PROXY header, a TLS handshake), then the loop: read, let
:class:`~trio_echo._protocol.EchoProtocol` decide what to echo, send it,
repeat until the protocol says it is done; then it closes cleanly: half-close,
discard the client's remaining input for a bounded time, close.  Every way a
connection can end becomes a close *reason* (:mod:`trio_echo._reasons`) here,
at the connection boundary, so no error ever reaches the server's nursery.

The bytes move through a :class:`~trio_echo._transports.Transport`; TLS and
faults are transports wrapping another, so this loop never learns about them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import trio

from ._config import ConnectionConfig
from ._protocol import Data, EchoProtocol
from ._reasons import CANCELLED, EOF, ERROR, IDLE, RESET, SHUTDOWN
from ._transports import Ended, Owner, Transport

__all__ = ["Connection", "Step"]

LOGGER = logging.getLogger("trio_echo")

_NOTHING: Final = b""

# Loop iterations allowed without a trip through the scheduler: a client whose
# data is always ready must not starve the other connections.
MAX_UNYIELDED: Final = 32

# The idle deadline is moved only when it is this close to stale, so that a
# busy connection does not re-key trio's deadline heap on every round; the
# timeout then fires between idle_timeout and idle_timeout * (1 + IDLE_SLACK).
IDLE_SLACK: Final = 0.05

# No steps before echoing: one shared empty tuple, nothing per connection.
_NO_STEPS: Final[tuple[Step, ...]] = ()


class Step(Protocol):
    """One step before the echo loop (a PROXY header, a TLS handshake).

    :meth:`Connection.serve` runs the steps in order, each in a cancel scope
    with its :attr:`timeout` that :meth:`Connection.stop` cancels (close
    reason ``shutdown``).  A step ends the connection by raising
    :exc:`~trio_echo._transports.Ended`; errors are handled as in the loop.
    """

    #: Seconds the step may take (``math.inf``: unbounded).
    timeout: float

    async def run(self, owner: Owner) -> None:
        """Do the step; raise :exc:`~trio_echo._transports.Ended` to end the connection."""

    def timed_out(self, owner: Owner) -> Ended:
        """Log that the step did not finish in time; the exception that ends the connection."""


class Connection:
    """One client connection: its steps, the echo loop and its clean close.

    Use :meth:`serve` once; it returns the close reason and never raises
    anything but :exc:`trio.Cancelled` (after closing the transport).  It is
    the transport's :class:`~trio_echo._transports.Owner`.

    Cancellation:
      :meth:`stop` asks for a graceful stop: a connection waiting for input
      (or in a step before echoing) stops waiting at once, one busy echoing
      finishes the echo in progress; either way every byte already read is
      echoed, then the connection half-closes and closes. Cancelling the task
      running :meth:`serve` closes the transport at once -- except once the
      *grace_ends* given to :meth:`stop` has passed: the grace ran out, and
      the connection still closes cleanly (half-close, then discard the
      client's input until its EOF, at most ``drain_timeout``, shielded), so
      a client that reads gets EOF, not a reset.
    """

    # Slots, not a __dict__: a server may hold tens of thousands of these.
    __slots__ = (
        "_clock",
        "_config",
        "_deadline",
        "_grace_ends",
        "_idle",
        "_on_close",
        "_protocol",
        "_receiving",
        "_scope",
        "_steps",
        "_stopping",
        "_transport",
        "_unsent",
        "_unyielded",
        "bytes_in",
        "bytes_out",
        "fault_events",
        "peer",
        "reason",
        "rounds",
        "started",
    )

    def __init__(
        self,
        transport: Transport,
        config: ConnectionConfig,
        *,
        peer: str,
        steps: Sequence[Step] = _NO_STEPS,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.peer = peer
        self.started = trio.current_time()
        self.rounds = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None
        #: Injected fault events of this connection, ``None`` until the first one.
        self.fault_events: Counter[str] | None = None
        self._transport = transport
        self._steps = steps
        self._config = config
        self._protocol = EchoProtocol(
            framing=config.framing, rounds=config.rounds, max_message=config.max_message
        )
        self._idle = config.idle_timeout
        self._scope = trio.CancelScope()
        self._deadline = math.inf
        self._stopping = False
        self._grace_ends = math.inf
        self._receiving = False
        self._unyielded = 0
        self._unsent: Data = b""
        self._on_close = on_close
        self._clock = trio.lowlevel.current_clock()
        transport.bind(self)

    @property
    def transport(self) -> Transport:
        """The transport the connection runs over (the outermost wrapper)."""
        return self._transport

    def stop(self, *, grace_ends: float = math.inf) -> None:
        """Ask for a graceful stop (see the class docstring); a cancellation
        from *grace_ends* (trio time) on still closes cleanly."""
        self._stopping = True
        self._grace_ends = grace_ends
        if self._receiving:
            self._scope.cancel()

    async def serve(self) -> str:
        """Run the steps, echo until done, close, and return the close reason.

        The echo loop is written out here rather than in methods of its own:
        every coroutine level costs each waiting connection a suspended frame,
        and a server may hold tens of thousands of them.
        """
        reason = ERROR
        transport = self._transport
        echoing = False
        try:
            if self._steps:
                await self._run_steps()
            echoing = True
            protocol = self._protocol
            if self._idle is not None:
                # With the slack from the start, the deadline need not move
                # again before a short-lived connection ends.
                self._move_idle_deadline(
                    self._clock.current_time() + self._idle * (1 + IDLE_SLACK)
                )
            with self._scope:
                while True:
                    data = transport.try_receive()
                    if data is None:
                        if self._stopping:
                            break
                        self._arm_idle()
                        self._receiving = True
                        try:
                            await transport.wait_receivable()
                        finally:
                            self._receiving = False
                        self._unyielded = 0
                        continue
                    out = self._take(data)
                    if self._stopping:
                        # stop() may have cancelled this scope just as the data
                        # arrived; the echo is sent after it, bounded by the grace.
                        self._unsent = bytes(out)
                        break
                    if out:
                        # As _send(), written out: no coroutine per round.
                        sent = transport.send_now(out)
                        if sent != len(out):
                            # The receive that led here was progress too.
                            self._arm_idle()
                            await transport.send_all(memoryview(out)[sent:])
                            self._unyielded = 0
                        self.bytes_out += len(out)
                        self.rounds = protocol.rounds
                    if protocol.reason is not None:
                        break
                    # Drop the views of the shared buffer before waiting again.
                    data = out = _NOTHING
                    self._unyielded += 1
                    if self._unyielded >= MAX_UNYIELDED:
                        # Busy without ever blocking: count it as progress, and
                        # let the other connections run.
                        self._unyielded = 0
                        self._arm_idle()
                        await trio.lowlevel.checkpoint()
            reason = await self._finish()
        except trio.Cancelled:
            reason = SHUTDOWN if self._stopping else CANCELLED
            if echoing and self._stopping and self._clock.current_time() >= self._grace_ends:
                # The grace ran out ("stop now" with a grace of 0): the echo in
                # progress is abandoned, but a close with unread input would be a
                # reset that erases echoes the client has not read yet.
                with trio.CancelScope(shield=True):
                    await self._close_cleanly()
            raise
        except Ended as ended:
            reason = ended.reason
            if ended.drain:
                await self._close_cleanly()
        except (trio.BrokenResourceError, ConnectionError) as exc:
            LOGGER.debug("%s: %s", self.peer, exc or type(exc).__name__)
            reason = RESET
        except OSError as exc:
            LOGGER.warning("%s: closing after a socket error: %s", self.peer, exc)
        except Exception:
            LOGGER.exception("%s: unexpected error; closing the connection", self.peer)
        finally:
            self.reason = reason
            with trio.CancelScope(shield=True):
                await transport.close()
            transport.bind(None)
            if self._on_close is not None:
                self._on_close(self)
        return reason

    async def _run_steps(self) -> None:
        """Each step before echoing, in a scope of its own that stop() cancels."""
        for step in self._steps:
            scope = self._scope = trio.CancelScope(
                deadline=self._clock.current_time() + step.timeout
            )
            if self._stopping:
                scope.cancel()
            self._receiving = True
            try:
                with scope:
                    await step.run(self)
            finally:
                self._receiving = False
            if scope.cancelled_caught:
                raise Ended(SHUTDOWN) if self._stopping else step.timed_out(self)
        self._scope = trio.CancelScope()

    def _take(self, data: Data) -> Data:
        """Feed one chunk (``b""``: EOF) to the protocol; return what to echo."""
        if data:
            self.bytes_in += len(data)
            return self._protocol.receive_data(data)
        return self._protocol.receive_eof()

    async def _send(self, out: Data) -> None:
        """Echo *out* (maybe empty) and count it."""
        if out:
            sent = self._transport.send_now(out)
            if sent != len(out):
                # The receive that led here was progress too, however long it waited.
                self._arm_idle()
                await self._transport.send_all(memoryview(out)[sent:])
                self._unyielded = 0
            self.bytes_out += len(out)
        self.rounds = self._protocol.rounds

    async def _finish(self) -> str:
        """After the echo loop: echo what a stop left over, decide the reason, close."""
        protocol = self._protocol
        if self._stopping:
            await self._send(self._unsent)
            reason = protocol.reason
            if reason is None:
                reason = SHUTDOWN
                await self._send(protocol.finish())
        elif self._scope.cancelled_caught:
            # No progress for idle_timeout, possibly in the middle of an echo.
            reason = IDLE
        else:
            reason = protocol.reason
            assert reason is not None
        if reason != EOF or self._transport.half_close_after_eof:
            await self._close_cleanly()
        return reason

    async def _close_cleanly(self) -> None:
        """Send EOF, then read and discard until the client's EOF, within drain_timeout.

        Closing a socket with unread input makes the kernel send a reset, which
        can destroy echoes still waiting in the client's receive buffer; draining
        first lets the client read everything, then see a clean EOF.  The reason
        is already decided: a client resetting now changes nothing.
        """
        try:
            with trio.move_on_after(self._config.drain_timeout):
                await self._transport.send_eof()
                await self._transport.discard_until_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            LOGGER.debug("%s: while closing: %s", self.peer, exc or type(exc).__name__)

    # ---- the Owner interface, for the transports and the steps ----

    def progress(self) -> None:
        """See :meth:`trio_echo._transports.Owner.progress`."""
        self._arm_idle()

    def defer_idle(self, until: float) -> None:
        """See :meth:`trio_echo._transports.Owner.defer_idle`."""
        idle = self._idle
        if idle is not None and until + idle > self._deadline:
            self._move_idle_deadline(until + idle)

    async def wait_as_idle(self, wait_for: Callable[[], Awaitable[None]]) -> None:
        """See :meth:`trio_echo._transports.Owner.wait_as_idle`."""
        idle = self._idle
        deadline = self._clock.current_time() + idle if idle is not None else math.inf
        # The loop's idle scope must not end this wait as "idle": a scope of its
        # own times it, and stop() cancels it at once, as a waiting receive.
        self._move_idle_deadline(math.inf)
        scope = self._scope = trio.CancelScope(deadline=deadline)
        self._deadline = deadline
        if self._stopping:
            return
        self._receiving = True
        try:
            with scope:
                await wait_for()
        finally:
            self._receiving = False

    def echoed(self, nbytes: int, *, whole: bool) -> None:
        """See :meth:`trio_echo._transports.Owner.echoed`."""
        self.bytes_out += nbytes
        if whole:
            self.rounds = self._protocol.rounds

    def report_fault(self, event: str) -> None:
        """See :meth:`trio_echo._transports.Owner.report_fault`."""
        if self.fault_events is None:
            self.fault_events = Counter()
        self.fault_events[event] += 1

    def _arm_idle(self) -> None:
        """Keep the idle deadline at least idle_timeout away: called on progress,
        right before the connection blocks."""
        idle = self._idle
        if idle is not None:
            deadline = self._clock.current_time() + idle
            if deadline > self._deadline:
                self._move_idle_deadline(deadline + idle * IDLE_SLACK)

    def _move_idle_deadline(self, deadline: float) -> None:
        # Mirrored in a plain attribute: reading CancelScope.deadline is a
        # property call, and _arm_idle runs before every wait.
        self._deadline = deadline
        self._scope.deadline = deadline
