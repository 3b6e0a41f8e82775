"""The Unix domain listening socket: stale files replaced, live ones refused, removed at the end.

A server that died leaves its socket file behind, and ``bind()`` then fails
with ``EADDRINUSE`` although nobody listens.  :func:`bind_unix` tells the two
apart the way a client would: it connects.  Refused -> the file is stale and
is replaced; accepted -> another server is live there and this one does not
start.  A path that exists and is not a socket is never removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

__all__ = ["UnixSocketFile", "bind_unix"]

# Until chmod() sets the requested mode, the file is created owner-only, so
# there is no moment when it is more open than asked for.
_PRIVATE_UMASK = 0o177


class UnixSocketFile:
    """The socket file a server created: removed at shutdown only if it is
    still the same file (another server may have replaced it since)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity = _identity(path)

    def remove(self) -> None:
        """Remove the file if it is still ours; never raises."""
        with contextlib.suppress(OSError):
            if _identity(self.path) == self._identity:
                os.unlink(self.path)


def _identity(path: str) -> tuple[int, ...]:
    # An inode number freed by unlink() is soon reused: the change time and the
    # file type tell a new file on the same inode from ours.
    info = os.stat(path)
    return (info.st_dev, info.st_ino, stat.S_IFMT(info.st_mode), info.st_ctime_ns)


def bind_unix(
    path: str | os.PathLike[str], *, mode: int | None, backlog: int
) -> tuple[socket.socket, UnixSocketFile]:
    """A listening Unix stream socket at *path* and the file to remove at shutdown.

    Raises:
      OSError: with ``EADDRINUSE`` if a live server listens at *path*, with
        ``EEXIST`` if *path* exists and is not a socket, or whatever
        ``bind()``/``chmod()`` raise (no such directory, permission denied).
        Nothing stays open or created.
    """
    name = os.fspath(path)
    _remove_if_stale(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        old_umask = os.umask(_PRIVATE_UMASK) if mode is not None else None
        try:
            sock.bind(name)
            bound = True
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if mode is not None:
            os.chmod(name, mode)
        sock.listen(backlog)
        # After chmod(), which changes the file's ctime.
        created = UnixSocketFile(name)
    except BaseException:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(name)
        raise
    return sock, created


def _remove_if_stale(path: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        # Nobody listens: a socket file left by a server that is gone.
        os.unlink(path)
        return
    except OSError:
        # Cannot tell (a full backlog times out, no permission): leave it alone.
        raise OSError(errno.EADDRINUSE, f"{path} is in use (a server may be live)") from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a live server")
