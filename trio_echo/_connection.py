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
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

import trio

from ._idle import current_sweep
from ._protocol import Data, EchoProtocol
from ._reasons import CANCELLED, EOF, ERROR, IDLE, RESET, SHUTDOWN
from ._transports import Ended, Step, Transport

__all__ = ["Connection"]

if TYPE_CHECKING:
    from ._assembly import Shared

LOGGER = logging.getLogger("trio_echo")

_NOTHING: Final = b""

# Loop iterations allowed without a trip through the scheduler: a client whose
# data is always ready must not starve the other connections.
MAX_UNYIELDED: Final = 32

# The idle timeout fires between idle_timeout and idle_timeout * (1 + IDLE_SLACK):
# half of the slack lets the deadline move only when it is that close to stale
# (no sweep bucket change on every round), the other half is the sweep's
# granularity (see _idle).
IDLE_SLACK: Final = 0.05
_HALF_SLACK: Final = IDLE_SLACK / 2

# Not a close reason: _ending's marker for "a fault wrapper was adopted, take
# it up at the next echo or wait" (see adopt()).  A marker in _ending rather than a
# flag of its own, so that the loop's plain path checks nothing more per round.
_REFAULT: Final = "refault"

# What a connection is blocked in, for stop() and the idle sweep to wake.
_NOT_WAITING: Final = 0
_RECEIVING: Final = 1
_SENDING: Final = 2


# No steps before echoing: one shared empty tuple, nothing per connection.
_NO_STEPS: Final[tuple[Step, ...]] = ()


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
        "_bucket",
        "_deadline",
        "_ending",
        "_grace_ends",
        "_protocol",
        "_scope",
        "_shared",
        "_steps",
        "_transport",
        "_waiting",
        "bytes_in",
        "bytes_out",
        "peer",
        "reason",
        "rounds",
        "started",
    )

    def __init__(
        self,
        transport: Transport,
        shared: Shared,
        *,
        peer: str,
        steps: Sequence[Step] = _NO_STEPS,
    ) -> None:
        self.peer = peer
        self.started = trio.current_time()
        self.rounds = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None
        self._transport = transport
        self._steps = steps
        self._shared = shared
        config = shared.config
        self._protocol = EchoProtocol(
            framing=config.framing, rounds=config.rounds, max_message=config.max_message
        )
        # The scope of a step before echoing or of a fault's stall, while one runs.
        self._scope: trio.CancelScope | None = None
        self._deadline = math.inf
        # The idle sweep's bucket for this connection (see _idle).
        self._bucket: float | None = None
        # Why the connection is being ended from outside, if it is: SHUTDOWN
        # (stop()) or IDLE (the idle sweep), those very objects (compared with
        # `is`: the loop checks it on every round).
        self._ending: str | None = None
        self._waiting = _NOT_WAITING
        # From then (trio time) on, a cancellation still closes cleanly (stop()).
        self._grace_ends = math.inf
        transport.bind(self)

    @property
    def transport(self) -> Transport:
        """The transport the connection runs over (the outermost wrapper)."""
        return self._transport

    def stop(self, *, grace_ends: float = math.inf) -> None:
        """Ask for a graceful stop (see the class docstring); a cancellation
        from *grace_ends* (trio time) on still closes cleanly."""
        self._ending = SHUTDOWN
        self._grace_ends = grace_ends
        if self._waiting == _RECEIVING:
            self._wake()

    async def serve(self) -> str:
        """Run the steps, echo until done, close, and return the close reason.

        The echo loop is written out here rather than in methods of its own:
        every coroutine level costs each waiting connection a suspended frame,
        and a server may hold tens of thousands of them.
        """
        reason = ERROR
        transport = self._transport
        try:
            if self._steps:
                await self._run_steps()
                # A fault wrapper may have been adopted meanwhile.
                transport = self._transport
            protocol = self._protocol
            if self._shared.idle is not None:
                self._start_idle()
            out: Data = _NOTHING
            # Rounds since the last trip through the scheduler.
            unyielded = 0
            while True:
                data = transport.try_receive()
                if data is None:
                    if self._ending is not None:
                        if self._ending is _REFAULT:
                            transport = self._refaulted()
                            continue
                        break
                    self._arm_idle()
                    self._waiting = _RECEIVING
                    try:
                        await transport.wait_receivable()
                    except trio.ClosedResourceError:
                        # Woken by interrupt(): the idle sweep, stop() or adopt().
                        if self._ending is _REFAULT:
                            transport = self._refaulted()
                            continue
                        if self._ending is None:
                            raise
                        break
                    finally:
                        self._waiting = _NOT_WAITING
                    unyielded = 0
                    continue
                out = self._take(data)
                # One test per round, as before adopt() existed (`is not None`
                # costs what `is SHUTDOWN` did); what it found is sorted out here.
                if self._ending is not None:
                    if self._ending is SHUTDOWN:
                        # stop() may have tried to wake the wait just as the data
                        # arrived; the echo is sent after it, bounded by the grace.
                        out = bytes(out)
                        break
                    if self._ending is _REFAULT:
                        # Adopted while this data was on its way: echo it with the faults.
                        transport = self._refaulted()
                if out:
                    # As _send(), written out: no coroutine per round.
                    sent = transport.send_now(out)
                    if sent != len(out):
                        # The receive that led here was progress too.
                        self._arm_idle()
                        self._waiting = _SENDING
                        try:
                            await transport.send_all(memoryview(out)[sent:])
                        finally:
                            self._waiting = _NOT_WAITING
                        unyielded = 0
                    self.bytes_out += len(out)
                    self.rounds = protocol.rounds
                # Sent (nothing left for _finish); and no view of the shared
                # buffer kept while waiting.
                data = out = _NOTHING
                if protocol.reason is not None:
                    break
                unyielded += 1
                if unyielded >= MAX_UNYIELDED:
                    # Busy without ever blocking: count it as progress, and
                    # let the other connections run.
                    unyielded = 0
                    self._arm_idle()
                    await trio.lowlevel.checkpoint()
            reason = await self._finish(out)
        except trio.Cancelled:
            reason = SHUTDOWN if self._ending is SHUTDOWN else CANCELLED
            if (
                # No step scope left: past the steps before echoing (a TLS
                # handshake cut short has no clean close to offer).  A local
                # flag would cost every waiting connection 8 bytes more.
                self._scope is None
                and self._ending is SHUTDOWN
                and self._shared.clock.current_time() >= self._grace_ends
            ):
                # The grace ran out ("stop now" with a grace of 0): the echo in
                # progress is abandoned, but a close with unread input would be a
                # reset that erases echoes the client has not read yet.
                with trio.CancelScope(shield=True):
                    await self._close_cleanly()
            raise
        except Ended as exc:
            reason = exc.reason
            if exc.drain:
                await self._close_cleanly()
        except (trio.BrokenResourceError, ConnectionError) as exc:
            LOGGER.debug("%s: %s", self.peer, exc or type(exc).__name__)
            reason = RESET
        except trio.ClosedResourceError:
            if self._ending is not IDLE:
                LOGGER.exception("%s: unexpected error; closing the connection", self.peer)
            else:
                # Woken by the idle sweep while blocked sending.
                reason = IDLE
                await self._close_cleanly()
        except OSError as exc:
            LOGGER.warning("%s: closing after a socket error: %s", self.peer, exc)
        except Exception:
            LOGGER.exception("%s: unexpected error; closing the connection", self.peer)
        finally:
            self.reason = reason
            if self._bucket is not None:
                current_sweep().discard(self, self._bucket)
            with trio.CancelScope(shield=True):
                await transport.close()
            transport.bind(None)
            if self._shared.on_close is not None:
                self._shared.on_close(self)
        return reason

    def adopt(self, transport: Transport) -> None:
        """Run over *transport* (a fault wrapper around the current one) from
        the connection's next echo on (one already being sent finishes as it
        was); a connection waiting for input is woken to take it up at once.

        How ``EchoServer.set_faults(..., existing=True)`` reaches a connection
        opened with faults off, without a check per round on the plain path.
        """
        self._transport = transport
        transport.bind(self)
        if self._ending is None:
            self._ending = _REFAULT
            if self._waiting == _RECEIVING and self._scope is None:
                self._wake()

    def _refaulted(self) -> Transport:
        self._ending = None
        return self._transport

    async def _run_steps(self) -> None:
        """Each step before echoing, in a scope of its own that stop() cancels."""
        for step in self._steps:
            scope = self._scope = trio.CancelScope(
                deadline=self._shared.clock.current_time() + step.timeout
            )
            if self._ending is SHUTDOWN:
                scope.cancel()
            self._waiting = _RECEIVING
            try:
                with scope:
                    await step.run(self)
            finally:
                self._waiting = _NOT_WAITING
            if scope.cancelled_caught:
                raise Ended(SHUTDOWN) if self._ending is SHUTDOWN else step.timed_out(self)
        self._scope = None

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
            self.bytes_out += len(out)
        self.rounds = self._protocol.rounds

    async def _finish(self, unsent: Data) -> str:
        """After the echo loop: echo what a stop left *unsent*, decide the reason, close."""
        protocol = self._protocol
        if self._ending is SHUTDOWN:
            await self._send(unsent)
            reason = protocol.reason
            if reason is None:
                reason = SHUTDOWN
                await self._send(protocol.finish())
        elif self._ending is IDLE:
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
            delay = self._transport.close_delay
            with trio.move_on_after(self._shared.config.drain_timeout + delay):
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
        idle = self._shared.idle
        if idle is not None and until + idle > self._deadline:
            self._deadline = until + idle

    async def wait_as_idle(self, wait_for: Callable[[], Awaitable[None]]) -> None:
        """See :meth:`trio_echo._transports.Owner.wait_as_idle`."""
        idle = self._shared.idle
        deadline = self._shared.clock.current_time() + idle if idle is not None else math.inf
        # The idle sweep must not end this wait as "idle": a scope of its own
        # times it, and stop() cancels it at once, as a waiting receive.
        self._deadline = math.inf
        scope = self._scope = trio.CancelScope(deadline=deadline)
        if self._ending is SHUTDOWN:
            return
        self._waiting = _RECEIVING
        try:
            with scope:
                await wait_for()
        finally:
            self._waiting = _NOT_WAITING

    def echoed(self, nbytes: int, *, whole: bool) -> None:
        """See :meth:`trio_echo._transports.Owner.echoed`."""
        self.bytes_out += nbytes
        if whole:
            self.rounds = self._protocol.rounds

    # ---- the idle sweep's interface (see _idle.Sweepable) ----

    def _start_idle(self) -> None:
        """Join the idle sweep.  With the slack from the start, the deadline need
        not move again before a short-lived connection ends."""
        idle = self._shared.idle
        assert idle is not None
        self._deadline = self._shared.clock.current_time() + idle * (1 + _HALF_SLACK)
        self._bucket = current_sweep().add(self, self._deadline, idle * _HALF_SLACK)

    def idle_check(self, now: float) -> None:
        """Called by the idle sweep once this connection's bucket is due."""
        idle = self._shared.idle
        assert idle is not None
        if self._deadline <= now and self._waiting != _NOT_WAITING:
            self._bucket = None
            if self._ending is None or self._ending is _REFAULT:
                self._ending = IDLE
                self._wake()
        elif self._deadline == math.inf:
            # A fault's stall times itself (wait_as_idle): out of the sweep.
            self._bucket = None
        else:
            # Progress moved the deadline on (or the connection is running
            # now, and arms it again before it next waits).
            deadline = max(self._deadline, now + idle * _HALF_SLACK)
            self._bucket = current_sweep().add(self, deadline, idle * _HALF_SLACK)

    def _wake(self) -> None:
        """Wake the wait this connection is blocked in (see stop() and idle_check)."""
        if self._scope is not None:
            self._scope.cancel()
        else:
            self._transport.interrupt()

    def _arm_idle(self) -> None:
        """Keep the idle deadline at least idle_timeout away: called on progress,
        right before the connection blocks.  Only a float write: the sweep
        finds the new deadline when the old one comes due."""
        idle = self._shared.idle
        if idle is not None:
            deadline = self._shared.clock.current_time() + idle
            if deadline > self._deadline:
                self._deadline = deadline + idle * _HALF_SLACK
