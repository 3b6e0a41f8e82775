"""UDP echo (RFC 862): the sockets, the receive loop and the paced sender of delayed echoes.

The decisions are not made here: :class:`~trio_echo._udp_policy.DatagramPolicy`
says which datagrams are answered and
:class:`~trio_echo._udp_faults.DatagramFaultPlan` what faults do to the
echoes; this module only moves datagrams and counts them.  The server runs
one receive loop per UDP socket next to its accept loops, and stops them at
shutdown as it stops accepting.

There is no connection in UDP, so the stream settings ``rounds``,
``framing`` and ``idle_timeout`` do not apply: every datagram admitted is
one echo, counted in ``statistics().udp``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import socket
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import trio

from ._config import ServerConfig
from ._logs import LogLimiter, event
from ._sockets import format_address
from ._stats import UDPStatistics
from ._udp_faults import DatagramFaultPlan, Echo
from ._udp_policy import DatagramPolicy

__all__ = ["UDPEcho", "bind_udp"]

LOGGER = logging.getLogger("trio_echo")

# Datagrams handled without a trip through the scheduler: a flood on one
# socket must not starve the TCP connections and the other sockets.
MAX_UNYIELDED: Final = 64

# Each drop reason is logged at most once per this many seconds (with the
# count so far), so that a flood cannot flood the log too.
DROP_LOG_INTERVAL: Final = 10.0

#: Echoes waiting for their injected delay, at most: beyond it a datagram is
#: dropped (``dropped_backlog``) rather than queued, so latency under a flood
#: costs bounded memory.
MAX_DELAYED: Final = 65536

DROPPED_BACKLOG: Final = "dropped_backlog"
DROPPED_SEND_ERROR: Final = "dropped_send_error"


def bind_udp(
    host: str | None, port: int, tcp_addresses: Sequence[tuple[str, int]]
) -> list[socket.socket]:
    """Bind the UDP sockets: on each TCP address (same host and port) if there
    are any, else on every address *host* resolves to (``None``: all).

    With ``port=0`` and no TCP address, the first socket picks the port and
    the others use it too.

    Raises:
      OSError: resolving or binding failed (address in use, ...); nothing stays open.
    """
    targets: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
    if tcp_addresses:
        for tcp_host, tcp_port in tcp_addresses:
            family = socket.AF_INET6 if ":" in tcp_host else socket.AF_INET
            targets.append((family, (tcp_host, tcp_port)))
    else:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
        for family, _, _, _, address in infos:
            target = (family, (str(address[0]), int(address[1])))
            if target not in targets:
                targets.append(target)
    sockets: list[socket.socket] = []
    try:
        for family, (bind_host, bind_port) in targets:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            if family == socket.AF_INET6:
                # As for TCP: IPv4 gets its own socket, not a mapped one.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if not tcp_addresses and bind_port == 0 and len(sockets) > 1:
                bind_port = sockets[0].getsockname()[1]
            sock.bind((bind_host, bind_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class UDPEcho:
    """The UDP side of one server: its sockets, policy, faults and counters.

    :meth:`receive` runs per socket until cancelled; with faults that delay
    or hold echoes, :meth:`send_delayed` runs once until :meth:`stop` and its
    queue is empty.  Errors: a socket error on a send drops that echo
    (``dropped_send_error``, logged); nothing a client sends ends a loop.
    """

    def __init__(
        self,
        config: ServerConfig,
        sockets: Sequence[socket.socket],
        *,
        fault_seed: int | None,
        fault_events: Counter[str],
    ) -> None:
        assert config.udp is not None
        self.sockets = tuple(sockets)
        names = [sock.getsockname() for sock in self.sockets]
        self.addresses = tuple((str(name[0]), int(name[1])) for name in names)
        max_message = config.connection.max_message
        self._policy = DatagramPolicy(config.udp, max_message=max_message, now=trio.current_time())
        # One more byte than the largest datagram: a full buffer means "too large".
        self._buffer = memoryview(bytearray(max_message + 1))
        faults = config.connection.faults
        self._plan: DatagramFaultPlan | None = None
        if faults.datagram_enabled:
            self._plan = DatagramFaultPlan(faults, seed=fault_seed, events=fault_events)
        self._delayed: list[tuple[float, int, bytes, socket.socket, object]] = []
        self._order = itertools.count()
        self._wake = trio.Event()
        self._stopping = False
        self.received = 0
        self.echoed = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped: Counter[str] = Counter()
        self._drop_log = LogLimiter(DROP_LOG_INTERVAL)

    @property
    def delays(self) -> bool:
        """Whether echoes may wait (faults on): then :meth:`send_delayed` must run."""
        return self._plan is not None

    def statistics(self) -> UDPStatistics:
        return UDPStatistics(
            received=self.received,
            echoed=self.echoed,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            dropped=sum(self.dropped.values()),
            dropped_by_reason=dict(sorted(self.dropped.items())),
            sources=self._policy.sources,
            delayed=len(self._delayed),
        )

    def stop(self) -> None:
        """Stop waiting for delays: :meth:`send_delayed` sends what it holds and returns."""
        self._stopping = True
        self._wake.set()

    async def receive(self, sock: socket.socket) -> None:
        """Echo what arrives on *sock* until cancelled."""
        view = self._buffer
        decide = self._policy.decide
        plan = self._plan
        unyielded = 0
        while True:
            try:
                n, address = sock.recvfrom_into(view)
            except BlockingIOError:
                unyielded = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                # An ICMP error queued on the socket (never for our own sends
                # on Linux without IP_RECVERR); nothing to answer.
                LOGGER.debug("udp: receive error: %s", exc)
                continue
            self.received += 1
            now = trio.current_time()
            reason = decide(address[0], address[1], n, now)
            if reason is not None:
                self._drop(reason, address, now)
            elif plan is None:
                self.bytes_in += n
                await self._send(sock, view[:n], address)
            else:
                self.bytes_in += n
                self._queue(plan.admit(bytes(view[:n]), (sock, address), now), now)
            unyielded += 1
            if unyielded >= MAX_UNYIELDED:
                unyielded = 0
                await trio.lowlevel.checkpoint()

    def _queue(self, echoes: list[Echo], now: float) -> None:
        """Queue *echoes* (destinations are ``(socket, address)``) for :meth:`send_delayed`."""
        for when, data, destination in echoes:
            sock, address = destination
            if len(self._delayed) >= MAX_DELAYED:
                self._drop(DROPPED_BACKLOG, address, now)
                continue
            heapq.heappush(self._delayed, (when, next(self._order), data, sock, address))
        self._wake.set()

    async def send_delayed(self) -> None:
        """Send each queued echo at its time until :meth:`stop`, then the rest at once.

        Cancellation:
          Cancelled (the server's grace is over), it drops what is still queued.
        """
        plan = self._plan
        assert plan is not None
        delayed = self._delayed
        while True:
            now = trio.current_time()
            self._queue(plan.flush(now) if self._stopping else plan.expire(now), now)
            sent = 0
            while delayed and (self._stopping or delayed[0][0] <= now):
                _, _, data, sock, address = heapq.heappop(delayed)
                await self._send(sock, data, address)
                sent += 1
                if sent % MAX_UNYIELDED == 0:
                    await trio.lowlevel.checkpoint()
            if self._stopping:
                if not delayed:
                    return
                continue
            deadline = min(delayed[0][0] if delayed else math.inf, plan.held_until)
            self._wake = trio.Event()
            with trio.move_on_at(deadline):
                await self._wake.wait()

    async def _send(self, sock: socket.socket, data: bytes | memoryview, address: Any) -> None:
        """Send one echo, waiting while the socket's buffer is full; a send that
        fails is counted and logged as ``dropped_send_error`` (never raised)."""
        while True:
            try:
                sock.sendto(data, address)
            except BlockingIOError:
                # The receive buffer is shared by every UDP socket of the server:
                # copy the echo out of it before another loop can overwrite it.
                data = bytes(data)
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                self._drop(DROPPED_SEND_ERROR, address, trio.current_time(), detail=str(exc))
                return
            self.echoed += 1
            self.bytes_out += len(data)
            return

    def _drop(self, reason: str, address: object, now: float, detail: str = "") -> None:
        """Count a dropped datagram; log it unless *reason* was logged within the interval."""
        self.dropped[reason] += 1
        if not self._drop_log.allow(reason, now):
            return
        count = self.dropped[reason]
        peer = format_address(address)
        LOGGER.warning(
            "udp: dropped a datagram from %s: %s%s (%d so far; logged at most every %s s)",
            peer,
            reason,
            f" ({detail})" if detail else "",
            count,
            DROP_LOG_INTERVAL,
            extra=event("udp_drop", peer=peer, reason=reason, count=count),
        )
