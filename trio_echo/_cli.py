"""The ``trio-echo`` command: arguments to config (the only place), logging, signals."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NoReturn, TypeVar

import attrs
import trio

from . import __version__
from ._config import FRAMINGS, ConnectionConfig, Faults, ListenerConfig, ServerConfig, TLSConfig
from ._logs import JSONFormatter, event, report_statistics
from ._server import EchoServer, serve
from ._sockets import (
    bind_reuseport_groups,
    describe_sockets,
    has_reuseport,
    listening_socket_from_fd,
    systemd_listen_fds,
)
from ._stats import ServerStatistics
from ._supervisor import Supervisor, WorkerSpec, die_with_parent
from ._tls import server_context
from ._units import parse_duration, parse_rate, parse_size

__all__ = ["main"]

LOGGER = logging.getLogger("trio_echo")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# Exit statuses: 0 after a clean (graceful) shutdown, 1 when the server cannot
# start, 2 for a usage error (argparse's own convention).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

# Descriptors the process needs besides one per connection: stdio, the
# listening sockets, trio's epoll and wake-up sockets, with room to spare.
FD_RESERVE = 32


T = TypeVar("T")


def _typed(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """An argparse ``type`` whose errors carry *parse*'s message (argparse
    would otherwise print only ``invalid <function name> value``)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


DURATION = _typed(parse_duration, "duration")
SIZE = _typed(parse_size, "size")
RATE = _typed(parse_rate, "rate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults_l, defaults_c = ListenerConfig(), ConnectionConfig()
    default_handshake = attrs.fields(TLSConfig).handshake_timeout.default
    parser = _Parser(
        prog="trio-echo",
        description="A TCP echo server built on trio.",
        epilog="SIGINT or SIGTERM shuts down gracefully; a second one stops at once.",
    )
    add = parser.add_argument
    add(
        "--host",
        default=None,
        help=f"address to bind; '' or '*' binds every address (default: {defaults_l.host})",
    )
    add(
        "--port",
        type=int,
        default=None,
        help=f"TCP port; 0 picks a free one, logged at start (default: {defaults_l.port})",
    )
    add(
        "--fd",
        type=int,
        action="append",
        metavar="N",
        help="serve on the inherited listening socket N instead of binding; repeatable "
        "(default: systemd's LISTEN_FDS sockets if LISTEN_PID is this process, else bind)",
    )
    add(
        "--workers",
        type=int,
        metavar="N",
        default=1,
        help="run N worker processes sharing the port with SO_REUSEPORT (Linux), "
        "restarted if they die (default: %(default)s)",
    )
    add(
        "--rounds",
        type=int,
        metavar="N",
        default=None,
        help="echo N messages per connection, then close (default: unlimited)",
    )
    add(
        "--framing",
        choices=FRAMINGS,
        default=defaults_c.framing,
        help="raw: a message is one receive; line: a message ends in \\n (default: %(default)s)",
    )
    add(
        "--max-message",
        type=int,
        metavar="BYTES",
        default=defaults_c.max_message,
        help="largest message (raw: per receive; line: longest line) (default: %(default)s)",
    )
    add(
        "--max-connections",
        type=int,
        metavar="N",
        default=defaults_l.max_connections,
        help="connections open at once, per worker; more wait in the backlog "
        "(default: %(default)s)",
    )
    add(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        default=defaults_c.idle_timeout,
        help="close a connection idle this long; 0 disables (default: %(default)s)",
    )
    add(
        "--grace",
        type=float,
        metavar="SECONDS",
        default=defaults_l.grace,
        help="on shutdown, time allowed to finish echoes in progress (default: %(default)s)",
    )
    add(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1/v2 header (HAProxy send-proxy, AWS NLB) on every "
        "connection and report the client it names",
    )
    add(
        "--proxy-timeout",
        type=float,
        metavar="SECONDS",
        default=defaults_l.proxy_timeout,
        help="with --proxy-protocol, time allowed for the header (default: %(default)s)",
    )
    add("--certfile", metavar="PEM", help="serve over TLS with this certificate chain")
    add("--keyfile", metavar="PEM", help="the private key, if not in --certfile (needs it)")
    add(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by these CAs (needs --certfile)",
    )
    add(
        "--tls-handshake-timeout",
        type=float,
        metavar="SECONDS",
        default=default_handshake,
        help="close clients that have not completed the TLS handshake by then "
        "(default: %(default)s)",
    )
    add(
        "--stats-interval",
        type=seconds,
        metavar="SECONDS",
        default=None,
        help="log the server's statistics every SECONDS (default: off)",
    )
    _add_fault_options(parser)
    add("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")
    add(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="json: one JSON object per line (default: %(default)s)",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    # Internal: set by the --workers parent on the command lines of its workers.
    add("--worker-of", metavar="PID:NUMBER", help=argparse.SUPPRESS)
    return parser


def _add_fault_options(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group(
        "faults",
        "misbehave on purpose, to test clients (all off by default). "
        "Durations take ms or s (50ms, 1.5s); sizes take B, KiB, MiB or GiB (64KiB).",
    )
    add = faults.add_argument
    add("--latency", type=DURATION, metavar="DURATION", default=0.0, help="delay each echo")
    add(
        "--jitter",
        type=DURATION,
        metavar="DURATION",
        default=0.0,
        help="vary each delay uniformly by up to +/- this (at most --latency)",
    )
    add(
        "--fragment",
        type=SIZE,
        metavar="SIZE",
        default=None,
        help="write each echo in pieces of at most SIZE bytes, one send each",
    )
    add(
        "--fragment-delay",
        type=DURATION,
        metavar="DURATION",
        default=0.0,
        help="wait this long between the pieces of an echo (needs --fragment)",
    )
    add(
        "--bandwidth",
        type=RATE,
        metavar="RATE",
        default=None,
        help="pace each connection's echoes to RATE bytes per second (64KiB or 64KiB/s)",
    )
    add(
        "--stall-after",
        type=SIZE,
        metavar="SIZE",
        default=None,
        help="after echoing SIZE bytes, stop reading and writing until the idle timeout",
    )
    add(
        "--reset-after",
        type=SIZE,
        metavar="SIZE",
        default=None,
        help="after echoing SIZE bytes, abort the connection with a TCP reset",
    )
    add(
        "--seed",
        type=int,
        metavar="N",
        default=None,
        help="seed for --jitter, to replay a run (default: drawn at start and logged)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the server's configuration from parsed arguments.

    Raises:
      ValueError, TypeError: from the config validators, naming the field.
    """
    defaults = ListenerConfig()
    host = defaults.host if args.host is None else args.host
    host = None if host in ("", "*") else host
    port = defaults.port if args.port is None else args.port
    idle = None if args.idle_timeout == 0 else args.idle_timeout
    tls = None
    if args.certfile is not None:
        tls = TLSConfig(
            certfile=args.certfile,
            keyfile=args.keyfile,
            client_ca=args.tls_client_ca,
            handshake_timeout=args.tls_handshake_timeout,
        )
    elif args.keyfile is not None or args.tls_client_ca is not None:
        raise ValueError("certfile is required by --keyfile and --tls-client-ca")
    return ServerConfig(
        tls=tls,
        listener=ListenerConfig(
            host=host,
            port=port,
            max_connections=args.max_connections,
            grace=args.grace,
            proxy_protocol=args.proxy_protocol,
            proxy_timeout=args.proxy_timeout,
        ),
        connection=ConnectionConfig(
            rounds=args.rounds,
            framing=args.framing,
            max_message=args.max_message,
            idle_timeout=idle,
            faults=Faults(
                latency=args.latency,
                jitter=args.jitter,
                fragment=args.fragment,
                fragment_delay=args.fragment_delay,
                bandwidth=args.bandwidth,
                stall_after=args.stall_after,
                reset_after=args.reset_after,
                seed=args.seed,
            ),
        ),
    )


# Config fields whose option is not simply --field-name.
OPTION_FOR_FIELD = {"client_ca": "--tls-client-ca", "handshake_timeout": "--tls-handshake-timeout"}


def _option_for(message: str) -> str:
    """The command-line option a validator's message is about (it starts with the field)."""
    field = message.split(" ", 1)[0]
    return OPTION_FOR_FIELD.get(field, "--" + field.replace("_", "-"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(f"argument {_option_for(str(exc))}: {exc}")
    worker = _worker_of(parser, args.worker_of)
    _check_listen_options(parser, args, worker)
    process = "supervisor" if args.workers > 1 else None
    if worker is not None:
        process = f"worker {worker[1]}"
    _configure_logging(args.log_level, args.log_format, process)
    if worker is not None and not die_with_parent(worker[0]):
        LOGGER.error("the supervisor (pid %d) is gone; not starting", worker[0])
        return EXIT_FAILURE
    if config.tls is not None:
        try:
            # Fail before starting, with the file's name; serve() loads it again.
            server_context(config.tls)
        except OSError as exc:
            print(f"trio-echo: error: cannot load TLS files: {_describe(exc)}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        fds: list[int] = args.fd or systemd_listen_fds(os.environ, os.getpid())
        sockets = [listening_socket_from_fd(fd) for fd in fds]
    except (OSError, ValueError) as exc:
        print(f"trio-echo: error: cannot serve on inherited sockets: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.workers > 1:
        return _supervise(config, args.workers, arguments, sockets, explicit_fds=bool(args.fd))
    return _serve_here(config, sockets or None, args.stats_interval)


def _worker_of(parser: argparse.ArgumentParser, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    pid, _, number = value.partition(":")
    if not (pid.isdigit() and number.isdigit()):
        parser.error(f"argument --worker-of: expected PID:NUMBER, got {value!r}")
    return int(pid), int(number)


def _check_listen_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, worker: tuple[int, int] | None
) -> None:
    if args.workers < 1:
        parser.error(f"argument --workers: workers must be >= 1, got {args.workers}")
    if args.workers > 1 and not (has_reuseport() and hasattr(os, "pidfd_open")):
        parser.error(
            "argument --workers: needs SO_REUSEPORT and pidfd_open (Linux), "
            "which this platform does not have"
        )
    # A worker's command line repeats the parent's --host/--port next to its --fd.
    if args.fd and worker is None and (args.host is not None or args.port is not None):
        parser.error("argument --fd: not allowed with --host or --port")


def _serve_here(
    config: ServerConfig, sockets: list[socket.socket] | None, stats_interval: float | None
) -> int:
    """Serve in this process until a signal; return the exit status."""
    raise_fd_limit(config.listener.max_connections + FD_RESERVE)
    failure: OSError | None = None
    interrupted = False
    try:
        stats = trio.run(_run, config, sockets, stats_interval)
    except* OSError as group:
        failure = _first_os_error(group)
    except* KeyboardInterrupt:
        # Ctrl-C arrived before the signal handlers were installed.
        interrupted = True
    if interrupted:
        return EXIT_INTERRUPTED
    if failure is not None:
        print(
            f"trio-echo: error: cannot listen on {_where(config)}: {_describe(failure)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    LOGGER.info(
        "stopped: %d connections, %d rounds, %d bytes in, %d bytes out",
        stats.accepted,
        stats.rounds,
        stats.bytes_in,
        stats.bytes_out,
        extra=event(
            "shutdown",
            accepted=stats.accepted,
            closed_by_reason=dict(stats.closed_by_reason),
            rounds=stats.rounds,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
            limit_waits=stats.limit_waits,
            accept_errors=stats.accept_errors,
        ),
    )
    return EXIT_OK


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


def _supervise(
    config: ServerConfig,
    workers: int,
    arguments: list[str],
    inherited: list[socket.socket],
    *,
    explicit_fds: bool,
) -> int:
    """Start *workers* worker processes and supervise them; return the exit status."""
    if inherited:
        # Every worker accepts on the same inherited sockets.
        groups = [inherited] * workers
    else:
        listener = config.listener
        try:
            groups = bind_reuseport_groups(listener.host, listener.port, workers, listener.backlog)
        except OSError as exc:
            print(
                f"trio-echo: error: cannot listen on {_where(config)}: {_describe(exc)}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    LOGGER.info("starting %d workers on %s", workers, describe_sockets(groups[0]))
    parent = os.getpid()
    specs = []
    for number, group in enumerate(groups, start=1):
        fds = tuple(sock.fileno() for sock in group)
        # Explicit --fd options are already in *arguments*, with the same numbers.
        fd_options = [] if explicit_fds else [f"--fd={fd}" for fd in fds]
        command = (
            sys.executable,
            "-m",
            "trio_echo",
            *arguments,
            *fd_options,
            "--workers=1",
            f"--worker-of={parent}:{number}",
        )
        specs.append(WorkerSpec(number=number, command=command, pass_fds=fds))
    sockets = list({id(sock): sock for group in groups for sock in group}.values())
    supervisor = Supervisor(specs, grace=config.listener.grace, sockets=sockets)
    return trio.run(supervisor.run)


def _configure_logging(level: str, log_format: str, process: str | None) -> None:
    """Log to stderr; with --workers, every line names its *process*."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JSONFormatter(process=process)
    else:
        prefix = "" if process is None else f"[{process}] "
        formatter = logging.Formatter(TEXT_FORMAT.replace("%(message)s", prefix + "%(message)s"))
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _where(config: ServerConfig) -> str:
    host = config.listener.host
    return f"{'*' if host is None else host}:{config.listener.port}"


def _first_os_error(group: BaseExceptionGroup[OSError]) -> OSError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, OSError)
    return exc


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


async def _run(
    config: ServerConfig, sockets: list[socket.socket] | None, stats_interval: float | None
) -> ServerStatistics:
    """Serve until a signal: the first shuts down gracefully, a second at once."""
    listeners = None
    if sockets is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: EchoServer = await nursery.start(
                functools.partial(serve, config, listeners=listeners)
            )
            nursery.start_soon(_watch_signals, signals, server, nursery.cancel_scope)
            if stats_interval is not None:
                nursery.start_soon(report_statistics, server, stats_interval)
            await server.wait_stopped()
            nursery.cancel_scope.cancel()
    return server.statistics()


async def _watch_signals(
    signals: AsyncIterator[int], server: EchoServer, scope: trio.CancelScope
) -> None:
    received = 0
    async for signum in signals:
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
            LOGGER.info("%s received: shutting down gracefully", name)
            server.request_shutdown()
        else:
            LOGGER.warning("%s received again: stopping now", name)
            scope.cancel()
