"""``--metrics``: the operations listener of a process, wired to its server or its workers.

One place that knows which statistics a process serves: a single server's
own (:func:`serve_operations` with :meth:`EchoServer.statistics`), or, for
the ``--workers`` supervisor, the sum and per-worker figures its workers
report (:class:`~trio_echo._workerstats.WorkerReports`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ._faults_api import FaultsEndpoint
from ._httpd import HealthEndpoints, serve_http
from ._logs import event
from ._metrics import Exposition, Snapshot
from ._sockets import format_address

__all__ = ["serve_operations"]

LOGGER = logging.getLogger("trio_echo")


async def serve_operations(
    host: str | None,
    port: int,
    *,
    source: Callable[[], Snapshot | None],
    ready: Callable[[], bool],
    start_time: float,
    faults: FaultsEndpoint | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` (from *source*), ``/healthz`` and ``/readyz`` (from
    *ready*) on *host*:*port* until cancelled; ``started`` gets the bound port.

    With *faults*, also ``/faults`` (see :mod:`trio_echo._faults_api`).
    Logs ``metrics on http://HOST:PORT/metrics`` for each listener.

    Error handling:
      Binding errors raise :exc:`OSError` before ``started``.
    """
    exposition = Exposition(source, start_time=start_time)
    endpoints = HealthEndpoints(metrics=exposition.render, ready=ready, faults=faults)
    # Bound here, not in a child task: a binding error is this call's OSError.
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = port
    for listener in listeners:
        name = listener.socket.getsockname()
        bound = int(name[1])
        LOGGER.info(
            "metrics on http://%s/metrics",
            format_address((str(name[0]), bound)),
            extra=event("metrics", host=str(name[0]), port=bound),
        )
    task_status.started(bound)
    await serve_http(endpoints, listeners)
