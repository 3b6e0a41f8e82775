"""Listening sockets made outside trio: ``SO_REUSEPORT`` groups and inherited descriptors.

trio's ``open_tcp_listeners`` has no hook for socket options set before
``bind()`` (trio issue #281), so sockets meant to share a port are created and
bound here, then handed to :func:`trio_echo.serve` as listeners.  The same path
serves descriptors inherited from systemd (``LISTEN_FDS``) or named with ``--fd``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import MutableMapping, Sequence
from typing import Final

__all__ = [
    "SD_LISTEN_FDS_START",
    "Network",
    "bind_reuseport_groups",
    "format_address",
    "host_of",
    "is_trusted",
    "listening_socket_from_fd",
    "systemd_listen_fds",
]

#: systemd passes its sockets as descriptors 3, 4, ... (sd_listen_fds(3)).
SD_LISTEN_FDS_START: Final = 3

# Unlike trio's default (the system's maximum), a fixed, ordinary backlog.
DEFAULT_BACKLOG: Final = 4096


def has_reuseport() -> bool:
    """Whether this platform can spread one port's connections over several sockets."""
    return hasattr(socket, "SO_REUSEPORT")


def bind_reuseport_groups(
    host: str | None, port: int, count: int, backlog: int | None
) -> list[list[socket.socket]]:
    """Bind *count* listening sockets per local address, all with ``SO_REUSEPORT``.

    Returns one list per worker, each holding one socket per address that
    *host* resolves to (``None``: every address, IPv4 and IPv6).  With
    ``port=0`` the first socket of each address picks the port and the others
    join it, so every worker listens on the same port.

    Raises:
      OSError: resolving or binding failed (address in use, permission
        denied, unknown host); nothing stays open.
    """
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    groups: list[list[socket.socket]] = [[] for _ in range(count)]
    seen: set[object] = set()
    try:
        for family, type_, proto, _, address in infos:
            # getaddrinfo may list an address twice (once per protocol, say).
            if (family, address) in seen:
                continue
            seen.add((family, address))
            for group in groups:
                sock = socket.socket(family, type_, proto)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    # As trio does: IPv4 gets its own socket, not a mapped one.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(DEFAULT_BACKLOG if backlog is None else backlog)
                # Port 0: the first bind picked the port; the rest of the group joins it.
                address = sock.getsockname()
    except BaseException:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


def systemd_listen_fds(environ: MutableMapping[str, str], pid: int) -> list[int]:
    """The descriptors systemd passed to process *pid*, removing its variables.

    Follows sd_listen_fds(3): ``LISTEN_FDS=n`` names descriptors 3 .. 3+n-1, and
    applies only if ``LISTEN_PID`` is *pid* (otherwise the variables were meant
    for an ancestor and are ignored).  ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` are removed either way, so that child processes do not
    see them.

    Raises:
      ValueError: ``LISTEN_FDS`` or ``LISTEN_PID`` is not a number.
    """
    listen_pid = environ.pop("LISTEN_PID", None)
    listen_fds = environ.pop("LISTEN_FDS", None)
    environ.pop("LISTEN_FDNAMES", None)
    if listen_pid is None or listen_fds is None:
        return []
    if not (listen_pid.isdigit() and listen_fds.isdigit()):
        raise ValueError(f"LISTEN_PID={listen_pid!r}, LISTEN_FDS={listen_fds!r}: not numbers")
    if int(listen_pid) != pid:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(listen_fds)))


def listening_socket_from_fd(fd: int) -> socket.socket:
    """Take over descriptor *fd*, which must be a listening stream socket.

    Raises:
      ValueError: *fd* is open but not a listening stream socket (it is left open).
      OSError: *fd* is not an open socket.
    """
    sock = socket.socket(fileno=fd)
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"fd {fd} is not a stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"fd {fd} is not a listening socket")
    except BaseException:
        sock.detach()
        raise
    return sock


def describe_sockets(sockets: Sequence[socket.socket]) -> str:
    """``host:port, ...`` of *sockets*, for messages."""
    return ", ".join(format_address(sock.getsockname()) for sock in sockets)


def format_address(address: object) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6, ``str()`` otherwise."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


#: A network an address can be checked against.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def host_of(peer: str) -> str:
    """The host of a ``host:port`` or ``[host]:port`` peer string."""
    host = peer.rpartition(":")[0] or peer
    return host[1:-1] if host.startswith("[") else host


def is_trusted(host: str, networks: Sequence[Network]) -> bool:
    """Whether *host* is in one of *networks* (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
