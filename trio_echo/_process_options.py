"""What the process needs besides the server's configuration: :class:`ProcessOptions`,
built by the command line and read by the roles (single server, supervisor, worker)."""

from __future__ import annotations

from typing import Literal

import attrs

from ._cli_ops import Endpoint

__all__ = ["LogFormat", "ProcessOptions"]

LogFormat = Literal["text", "json"]


@attrs.frozen(kw_only=True)
class ProcessOptions:
    """What the process needs besides the server's :class:`ServerConfig`."""

    arguments: tuple[str, ...]
    """The command line as given, repeated on the command lines of workers."""
    workers: int
    """Worker processes to run (1: serve in this process)."""
    fds: tuple[int, ...] | None
    """Descriptors named by ``--fd`` (``None``: systemd's, if any, else bind)."""
    worker_of: tuple[int, int] | None
    """For a worker: its supervisor's PID and its own number."""
    stats_interval: float | None
    """Seconds between ``stats`` log lines (``None``: none)."""
    log_level: str
    log_format: LogFormat
    # ---- operations (issue 16) ----
    metrics: Endpoint | None = None
    """Where to serve /metrics, /healthz and /readyz (``--metrics``), or ``None``."""
    stats_fd: int | None = None
    """For a worker under a ``--metrics`` supervisor: the pipe for its reports."""
    warnings: tuple[str, ...] = ()
    """Unknown ``TRIO_ECHO_*`` variables, to log once logging is set up."""
    worker_timeout: float | None = None
    """``--workers``: seconds a worker may send no heartbeat before it is killed
    and restarted (``None``: never)."""
    heartbeat_fd: int | None = None
    """For a worker: the pipe to send heartbeats on (set by the supervisor)."""
