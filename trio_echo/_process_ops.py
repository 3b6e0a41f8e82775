"""A serving process's work for operators: metrics, worker reports, SIGHUP, the configuration line.

Used by :mod:`trio_echo._roles` for the single server, the ``--workers``
supervisor and its workers; the metrics modules (and so h11 and
prometheus_client) are imported only when ``--metrics`` is on.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio

from ._cli_ops import Endpoint
from ._config import Faults, ServerConfig
from ._logs import event
from ._process_options import ProcessOptions
from ._server import EchoServer
from ._settings import configuration_in_effect
from ._startup import StartupError, describe
from ._stats import ServerStatistics

if TYPE_CHECKING:
    from ._faults_api import FaultsEndpoint
    from ._metrics import Snapshot

__all__ = [
    "START_TIME",
    "ProcessOperations",
    "log_configuration",
    "reload_on_sighup",
    "start_metrics",
]

LOGGER = logging.getLogger("trio_echo")


def log_configuration(config: ServerConfig, options: ProcessOptions) -> None:
    """One line (one ``config`` event) with every setting in effect; paths, never contents."""
    metrics = None
    if options.metrics is not None:
        host, port = options.metrics
        metrics = f"{'*' if host is None else host}:{port}"
    settings = configuration_in_effect(
        config,
        {
            "workers": options.workers,
            "fds": options.fds,
            "metrics": metrics,
            "stats_interval": options.stats_interval,
            "log_level": options.log_level,
            "log_format": options.log_format,
        },
    )
    text = " ".join(f"{name}={value}" for name, value in settings.items())
    LOGGER.info("configuration: %s", text, extra=event("config", **settings))


class ProcessOperations:
    """What a serving process does for operators besides echoing (``--metrics``,
    a worker's reports to its supervisor)."""

    def __init__(self, *, metrics: Endpoint | None = None, stats_fd: int | None = None) -> None:
        self.metrics = metrics
        self.stats_fd = stats_fd
        self.server: EchoServer | None = None
        #: Called once the server listens.
        self.on_started: Callable[[], None] | None = None

    async def start_metrics(self, nursery: trio.Nursery) -> None:
        """Start the metrics listener, if any, before the server (``/readyz`` 503 until then).

        Raises:
          StartupError: the metrics address cannot be bound.
        """
        if self.metrics is None:
            return
        from ._metrics import Snapshot

        def source() -> Snapshot | None:
            return None if self.server is None else Snapshot(total=self.server.statistics())

        def ready() -> bool:
            return self.server is not None and self.server.ready

        from ._faults_api import FaultsEndpoint

        def get_faults() -> Faults | None:
            return None if self.server is None else self.server.faults

        def set_faults(faults: Faults | None, *, existing: bool) -> None:
            if self.server is not None:
                self.server.set_faults(faults, existing=existing)

        faults = FaultsEndpoint(get_faults, set_faults)
        await start_metrics(nursery, self.metrics, source, ready, faults)

    def start_reports(self, nursery: trio.Nursery, server: EchoServer) -> None:
        self.server = server
        if self.on_started is not None:
            self.on_started()
        if self.stats_fd is not None:
            from ._workerstats import report_to_supervisor

            def status() -> tuple[bool, ServerStatistics]:
                return server.ready, server.statistics()

            nursery.start_soon(report_to_supervisor, self.stats_fd, status)


async def start_metrics(
    nursery: trio.Nursery,
    endpoint: Endpoint,
    source: Callable[[], Snapshot | None],
    ready: Callable[[], bool],
    faults: FaultsEndpoint | None = None,
) -> None:
    """Start ``--metrics``' listener in *nursery* (*faults*: ``/faults`` too).

    Raises:
      StartupError: the address cannot be bound.
    """
    from ._operations import serve_operations

    host, port = endpoint
    try:
        await nursery.start(
            functools.partial(
                serve_operations,
                host,
                port,
                source=source,
                ready=ready,
                start_time=START_TIME,
                faults=faults,
            )
        )
    except OSError as exc:
        where = f"{'*' if host is None else host}:{port}"
        raise StartupError(f"cannot serve metrics on {where}: {describe(exc)}") from None


# When this process started (trio_echo_process_start_time_seconds).
START_TIME = time.time()


async def reload_on_sighup(hangups: AsyncIterator[int], reload: Callable[[], object]) -> None:
    """On each SIGHUP, re-read the TLS files (a worker: its supervisor forwards it)."""
    async for _ in hangups:
        LOGGER.info("SIGHUP received: reloading TLS files")
        reload()
