"""Process roles: run this process as the single server, the ``--workers`` supervisor or a worker.

:func:`run` takes the configuration the command line built, sets up logging,
checks what can only be checked on this machine (the TLS files, inherited
descriptors, the address), and serves until a signal.  A start-up failure is
one line on stderr -- a JSON ``error`` event with ``--log-format json`` -- and
exit status 1, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
from typing import TypeVar, cast

import trio

from ._config import ServerConfig
from ._fdlimit import FD_RESERVE, raise_fd_limit
from ._heartbeat import beat, send_heartbeats
from ._logs import configure_logging, counters, event, report_startup_error, report_statistics
from ._process_ops import ProcessOperations, log_configuration, reload_on_sighup, start_metrics
from ._process_options import ProcessOptions
from ._serve import serve
from ._server import EchoServer
from ._signals import dispatch_signals, shutdown_signals
from ._sockets import (
    bind_reuseport_groups,
    describe_sockets,
    listening_socket_from_fd,
    systemd_listen_fds,
)
from ._startup import StartupError, describe
from ._stats import ServerStatistics
from ._supervisor import Supervisor, WorkerSpec, die_with_parent
from ._tls import server_context

__all__ = ["run"]

LOGGER = logging.getLogger("trio_echo")

_E = TypeVar("_E", bound=BaseException)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def run(config: ServerConfig, options: ProcessOptions) -> int:
    """Serve *config* in the role *options* give this process; return the exit status.

    Blocks until the server (or every worker) has stopped after a signal:
    the first SIGINT or SIGTERM shuts down gracefully, a second at once.
    """
    process = "supervisor" if options.workers > 1 else None
    if options.worker_of is not None:
        process = f"worker {options.worker_of[1]}"
    configure_logging(options.log_level, options.log_format, process)
    if options.worker_of is None:  # Workers inherit the same environment: warned once.
        for warning in options.warnings:
            LOGGER.warning("%s", warning)
    if options.worker_of is not None and not die_with_parent(options.worker_of[0]):
        LOGGER.error("the supervisor (pid %d) is gone; not starting", options.worker_of[0])
        return EXIT_FAILURE
    try:
        _check_tls_files(config)
        sockets = _inherited_sockets(options.fds)
        if options.workers > 1:
            return _supervise(config, options, sockets)
        return _serve_here(config, sockets or None, options)
    except StartupError as exc:
        report_startup_error(str(exc), options.log_format)
        return EXIT_FAILURE


def _check_tls_files(config: ServerConfig) -> None:
    if config.tls is not None:
        try:
            # Fail before starting, with the file's name; serve() loads it again.
            server_context(config.tls)
        except OSError as exc:
            raise StartupError(f"cannot load TLS files: {_describe(exc)}") from None


def _inherited_sockets(fds: tuple[int, ...] | None) -> list[socket.socket]:
    """The listening sockets named by ``--fd``, else systemd's (``LISTEN_FDS``), else none."""
    try:
        numbers = list(fds) if fds is not None else systemd_listen_fds(os.environ, os.getpid())
    except ValueError as exc:
        raise StartupError(f"cannot serve on inherited sockets: {exc}") from None
    sockets = []
    for fd in numbers:
        try:
            sockets.append(listening_socket_from_fd(fd))
        except OSError as exc:
            raise StartupError(
                f"cannot serve on inherited sockets: fd {fd}: {_describe(exc)}"
            ) from None
        except ValueError as exc:
            raise StartupError(f"cannot serve on inherited sockets: {exc}") from None
    return sockets


def _serve_here(
    config: ServerConfig, sockets: list[socket.socket] | None, options: ProcessOptions
) -> int:
    """Serve in this process until a signal; return the exit status."""
    raise_fd_limit(config.listener.max_connections + FD_RESERVE)
    failure: OSError | None = None
    interrupted = False
    # A worker's metrics are its supervisor's to serve (from its reports).
    metrics = options.metrics if options.worker_of is None else None
    ops = ProcessOperations(metrics=metrics, stats_fd=options.stats_fd)
    if options.worker_of is None:
        # Logged once the server listens: a start-up failure stays the only line.
        ops.on_started = functools.partial(log_configuration, config, options)
    try:
        stats = trio.run(
            _serve_until_signalled,
            config,
            sockets,
            options.stats_interval,
            ops,
            options.heartbeat_fd,
        )
    except* StartupError as group:
        raise _first(group) from None
    except* OSError as group:
        failure = _first(group)
    except* KeyboardInterrupt:
        # Ctrl-C arrived before the signal handlers were installed.
        interrupted = True
    if interrupted:
        return EXIT_INTERRUPTED
    if failure is not None:
        raise StartupError(f"cannot listen on {_where(config)}: {_describe(failure)}")
    LOGGER.info(
        "stopped: %d connections, %d rounds, %d bytes in, %d bytes out",
        stats.accepted,
        stats.rounds,
        stats.bytes_in,
        stats.bytes_out,
        extra=event("shutdown", **counters(stats)),
    )
    return EXIT_OK


async def _serve_until_signalled(
    config: ServerConfig,
    sockets: list[socket.socket] | None,
    stats_interval: float | None,
    ops: ProcessOperations | None = None,
    heartbeat_fd: int | None = None,
) -> ServerStatistics:
    """Serve until a signal: the first shuts down gracefully, a second at once.

    With *heartbeat_fd* (a ``--workers`` worker), heartbeats go to the
    supervisor from this loop until the server has stopped.
    """
    ops = ops or ProcessOperations()
    listeners = None
    if sockets is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    if heartbeat_fd is not None:
        # The first beat before "listening": the supervisor then applies its
        # --worker-timeout, not the start-up allowance, from the moment it serves.
        beat(heartbeat_fd)
    # SIGHUP's receiver is open from the start: its default action would end the process.
    with shutdown_signals() as signals, trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async with trio.open_nursery() as nursery:
            await ops.start_metrics(nursery)
            server: EchoServer = await nursery.start(
                functools.partial(serve, config, listeners=listeners)
            )

            def graceful(signum: signal.Signals) -> None:
                LOGGER.info("%s received: shutting down gracefully", signum.name)
                server.request_shutdown()

            def immediate(signum: signal.Signals) -> None:
                LOGGER.warning("%s received again: stopping now", signum.name)
                nursery.cancel_scope.cancel()

            nursery.start_soon(
                functools.partial(
                    dispatch_signals, signals, graceful=graceful, immediate=immediate
                )
            )
            ops.start_reports(nursery, server)
            nursery.start_soon(reload_on_sighup, hangups, server.reload_tls)
            if stats_interval is not None:
                nursery.start_soon(report_statistics, server, stats_interval)
            if heartbeat_fd is not None:
                nursery.start_soon(send_heartbeats, heartbeat_fd)
            await server.wait_stopped()
            nursery.cancel_scope.cancel()
    return server.statistics()


def _supervise(
    config: ServerConfig, options: ProcessOptions, inherited: list[socket.socket]
) -> int:
    """Start the worker processes and supervise them; return the exit status."""
    workers = options.workers
    if inherited:
        # Every worker accepts on the same inherited sockets.
        groups = [inherited] * workers
    else:
        listener = config.listener
        try:
            groups = bind_reuseport_groups(listener.host, listener.port, workers, listener.backlog)
        except OSError as exc:
            raise StartupError(f"cannot listen on {_where(config)}: {_describe(exc)}") from None
    log_configuration(config, options)
    LOGGER.info("starting %d workers on %s", workers, describe_sockets(groups[0]))
    parent = os.getpid()
    specs = []
    # --metrics: one pipe per worker number for its statistics reports; the
    # write end stays open here, so that a restarted worker gets it too.
    pipes = {number: os.pipe() for number in range(1, workers + 1)} if options.metrics else {}
    for number, group in enumerate(groups, start=1):
        fds = tuple(sock.fileno() for sock in group)
        # Explicit --fd options are already in the arguments, with the same numbers.
        fd_options = [] if options.fds else [f"--fd={fd}" for fd in fds]
        stats_options: list[str] = []
        if number in pipes:
            stats_options = [f"--stats-fd={pipes[number][1]}"]
            fds = (*fds, pipes[number][1])
        command = (
            sys.executable,
            "-m",
            "trio_echo",
            *options.arguments,
            *fd_options,
            *stats_options,
            "--workers=1",
            f"--worker-of={parent}:{number}",
        )
        specs.append(WorkerSpec(number=number, command=command, pass_fds=fds))
    sockets = list({id(sock): sock for group in groups for sock in group}.values())
    reports = None
    if options.metrics:
        from ._workerstats import WorkerReports

        reports = WorkerReports()
    supervisor = Supervisor(
        specs,
        grace=config.listener.grace,
        sockets=sockets,
        on_exit=None if reports is None else reports.worker_stopped,
        worker_timeout=options.worker_timeout,
    )
    endpoint = options.metrics

    async def supervise() -> int:
        with trio.open_signal_receiver(signal.SIGHUP) as hangups:
            async with trio.open_nursery() as nursery:
                if endpoint is not None and reports is not None:
                    await start_metrics(
                        nursery,
                        endpoint,
                        reports.snapshot,
                        lambda: reports.any_ready and not supervisor.stopping,
                    )
                    for number, (read_end, _) in pipes.items():
                        nursery.start_soon(reports.read, number, read_end)

                def forward() -> None:
                    supervisor.signal_workers(signal.SIGHUP)

                nursery.start_soon(reload_on_sighup, hangups, forward)
                status = await supervisor.run()
                nursery.cancel_scope.cancel()
        return status

    try:
        return trio.run(supervise)
    except* StartupError as group:
        raise _first(group) from None


def _where(config: ServerConfig) -> str:
    listener = config.listener
    host = listener.host
    where = f"{'*' if host is None else host}:{listener.port}"
    # UDP and the Unix socket (issue 15).
    places = [where] if listener.tcp else []
    if config.udp is not None:
        places.append(f"udp {where}")
    if listener.unix is not None:
        places.append(f"unix:{os.fspath(listener.unix)}")
    return ", ".join(places)


def _first(group: BaseExceptionGroup[_E]) -> _E:
    """The first leaf exception of *group* (nested groups included)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return cast(_E, exc)


def _describe(exc: OSError) -> str:
    return describe(exc)
