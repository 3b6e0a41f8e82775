"""The ``trio-echo`` command: arguments to config (the only place), logging, signals."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import NoReturn

import trio

from . import __version__
from ._config import FRAMINGS, ConnectionConfig, ListenerConfig, ServerConfig
from ._server import EchoServer, serve
from ._stats import ServerStatistics

__all__ = ["main"]

LOGGER = logging.getLogger("trio_echo")

LOG_LEVELS = ("debug", "info", "warning", "error")

# Exit statuses: 0 after a clean (graceful) shutdown, 1 when the server cannot
# start, 2 for a usage error (argparse's own convention).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

# Descriptors the process needs besides one per connection: stdio, the
# listening sockets, trio's epoll and wake-up sockets, with room to spare.
FD_RESERVE = 32


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    defaults_l, defaults_c = ListenerConfig(), ConnectionConfig()
    parser = _Parser(
        prog="trio-echo",
        description="A TCP echo server built on trio.",
        epilog="SIGINT or SIGTERM shuts down gracefully; a second one stops at once.",
    )
    add = parser.add_argument
    add(
        "--host",
        default=defaults_l.host,
        help="address to bind; '' or '*' binds every address (default: %(default)s)",
    )
    add(
        "--port",
        type=int,
        default=defaults_l.port,
        help="TCP port; 0 picks a free one, logged at start (default: %(default)s)",
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
        help="connections open at once; more wait in the backlog (default: %(default)s)",
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
    add("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the server's configuration from parsed arguments.

    Raises:
      ValueError, TypeError: from the config validators, naming the field.
    """
    host = None if args.host in ("", "*") else args.host
    idle = None if args.idle_timeout == 0 else args.idle_timeout
    return ServerConfig(
        listener=ListenerConfig(
            host=host, port=args.port, max_connections=args.max_connections, grace=args.grace
        ),
        connection=ConnectionConfig(
            rounds=args.rounds,
            framing=args.framing,
            max_message=args.max_message,
            idle_timeout=idle,
        ),
    )


def _option_for(message: str) -> str:
    """The command-line option a validator's message is about (it starts with the field)."""
    field = message.split(" ", 1)[0]
    return "--" + field.replace("_", "-")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(f"argument {_option_for(str(exc))}: {exc}")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    raise_fd_limit(config.listener.max_connections + FD_RESERVE)
    failure: OSError | None = None
    interrupted = False
    try:
        stats = trio.run(_run, config)
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


async def _run(config: ServerConfig) -> ServerStatistics:
    """Serve until a signal: the first shuts down gracefully, a second at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: EchoServer = await nursery.start(serve, config)
            nursery.start_soon(_watch_signals, signals, server, nursery.cancel_scope)
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
