"""What ``serve()`` binds besides TCP: UDP sockets on the TCP addresses, and the Unix socket."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Final

import trio

from ._config import ServerConfig
from ._logs import event
from ._sockets import format_address
from ._stats import UDPStatistics
from ._udp import UDPEcho, bind_udp
from ._unix import UnixSocketFile, bind_unix

__all__ = ["OtherEndpoints", "bind_other_endpoints"]

LOGGER = logging.getLogger("trio_echo")

# The Unix socket's listen backlog when none is configured (as for --workers).
UNIX_BACKLOG: Final = 4096


def bind_other_endpoints(
    config: ServerConfig, tcp_listeners: Sequence[trio.SocketListener]
) -> tuple[list[socket.socket], trio.SocketListener | None, UnixSocketFile | None]:
    """Bind the UDP sockets (on the TCP listeners' addresses, or on the
    configured host and port without them) and the Unix socket, as configured.

    Returns the UDP sockets, the Unix listener and its file (``[]``/``None`` when off).

    Raises:
      OSError: binding failed (see :func:`~trio_echo._udp.bind_udp` and
        :func:`~trio_echo._unix.bind_unix`); nothing bound here stays open.
    """
    listener = config.listener
    udp_sockets: list[socket.socket] = []
    if config.udp is not None:
        names = [
            tcp.socket.getsockname()
            for tcp in tcp_listeners
            if tcp.socket.family != socket.AF_UNIX
        ]
        udp_sockets = bind_udp(
            listener.host, listener.port, [(str(name[0]), int(name[1])) for name in names]
        )
    if listener.unix is None:
        return udp_sockets, None, None
    try:
        sock, unix_file = bind_unix(
            listener.unix, mode=listener.unix_mode, backlog=listener.backlog or UNIX_BACKLOG
        )
    except BaseException:
        for udp in udp_sockets:
            udp.close()
        raise
    return udp_sockets, trio.SocketListener(trio.socket.from_stdlib_socket(sock)), unix_file


class OtherEndpoints:
    """What a server serves beside its stream listeners: UDP echo and the Unix socket file.

    The server starts them with its accept loops (:meth:`start`), stops the
    UDP echo when its shutdown begins (:meth:`stop`) and closes both when it
    has stopped (:meth:`close`: UDP sockets closed, the socket file removed).
    """

    def __init__(self, *, udp: UDPEcho | None, unix_file: UnixSocketFile | None) -> None:
        self.udp = udp
        self.unix_file = unix_file

    @property
    def udp_addresses(self) -> tuple[tuple[str, int], ...]:
        return () if self.udp is None else self.udp.addresses

    @property
    def unix_path(self) -> str | None:
        return None if self.unix_file is None else self.unix_file.path

    def udp_statistics(self) -> UDPStatistics | None:
        return None if self.udp is None else self.udp.statistics()

    def start(self, acceptors: trio.Nursery, handlers: trio.Nursery, *, tls: bool) -> None:
        """Log the Unix socket; start the UDP loops in *acceptors* (so that they
        stop with the accept loops) and the delayed sender in *handlers*."""
        if self.unix_file is not None:
            path = self.unix_file.path
            LOGGER.info("listening on unix:%s", path, extra=event("start", unix=path, tls=tls))
        udp = self.udp
        if udp is None:
            return
        for sock, (host, port) in zip(udp.sockets, udp.addresses, strict=True):
            acceptors.start_soon(udp.receive, sock, name=f"udp {format_address((host, port))}")
            LOGGER.info(
                "listening on %s (udp)",
                format_address((host, port)),
                extra=event("start", host=host, port=port, udp=True),
            )
        if udp.delays:
            handlers.start_soon(udp.send_delayed)

    def stop(self) -> None:
        """Stop answering datagrams (a shutdown has begun)."""
        if self.udp is not None:
            self.udp.stop()

    def close(self) -> None:
        """Close the UDP sockets and remove the Unix socket file (if still ours)."""
        self.stop()
        if self.udp is not None:
            for sock in self.udp.sockets:
                sock.close()
        if self.unix_file is not None:
            self.unix_file.remove()
