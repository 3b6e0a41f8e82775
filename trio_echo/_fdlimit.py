"""The process's open file limit: raise ``RLIMIT_NOFILE`` to what ``--max-connections`` needs."""

from __future__ import annotations

import logging
import resource
from typing import Final

__all__ = ["FD_RESERVE", "raise_fd_limit"]

LOGGER = logging.getLogger("trio_echo")

#: Descriptors the process needs besides one per connection: stdio, the
#: listening sockets, trio's epoll and wake-up sockets, with room to spare.
FD_RESERVE: Final = 32


def raise_fd_limit(needed: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to *needed*, or as close as the hard limit allows.

    Never lowers it.  Logs a warning when the process cannot have *needed*
    descriptors: the server still runs, and once they are all in use,
    ``accept()`` fails with ``EMFILE`` and is retried (clients wait in the backlog).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            LOGGER.warning("cannot raise the open file limit from %d: %s", soft, exc)
            target = soft
        else:
            LOGGER.info("raised the open file limit from %d to %d", soft, target)
    if target < needed:
        LOGGER.warning(
            "the open file limit (%d) is below the %d that --max-connections needs; "
            "beyond about %d connections, new clients wait in the backlog",
            target,
            needed,
            max(target - FD_RESERVE, 0),
        )
