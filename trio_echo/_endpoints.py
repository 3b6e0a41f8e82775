"""What ``serve()`` binds besides TCP: UDP sockets on the TCP addresses, and the Unix socket."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Final

import trio

from ._config import ServerConfig
from ._udp import bind_udp
from ._unix import UnixSocketFile, bind_unix

__all__ = ["bind_other_endpoints"]

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
