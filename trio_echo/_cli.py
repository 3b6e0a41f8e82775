"""The ``trio-echo`` command line: the parser, and arguments to configuration (nothing else).

This module imports neither trio nor the server: ``--help``, ``--version``
and usage errors answer before anything heavy is loaded.  Once the arguments
are valid, :func:`main` hands the configuration to :mod:`trio_echo._roles`,
which runs this process as the single server, the supervisor or a worker.

Exit statuses: 0 after a clean (graceful) shutdown; 1 when the server cannot
start (address in use, a TLS file missing, a descriptor that is not open or not
a listening socket: facts about the machine, known only when trying); 2 for a
usage error (a value no machine would accept: argparse's convention); 130 for a
Ctrl-C that arrives before the signal handlers are installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import attrs

from ._cli_faults import FAULT_OPTIONS, add_fault_options
from ._cli_ops import add_operations_options, check_metrics_available
from ._cli_transports import (
    FIELD_OPTIONS,
    add_transport_options,
    check_transport_options,
    transport_config,
)
from ._cli_types import DESCRIPTOR, DURATION, POSITIVE_DURATION, RATE, SIZE, Parser
from ._config import FRAMINGS, ConnectionConfig, Faults, ListenerConfig, ServerConfig, TLSConfig
from ._process_options import LogFormat, ProcessOptions
from ._settings import arguments_from_environment, document_environment
from ._sockets import has_reuseport
from ._version import __version__

__all__ = ["build_parser", "config_from_args", "main"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


#: --worker-timeout's default, in seconds: gunicorn's --timeout is 30; an echo
#: worker's loop never blocks for long, so a third of that is ample.
WORKER_TIMEOUT = 10.0


def build_parser() -> argparse.ArgumentParser:
    """The ``trio-echo`` argument parser; defaults come from the config classes."""
    listener, connection = ListenerConfig(), ConnectionConfig()
    handshake = attrs.fields(TLSConfig).handshake_timeout.default
    parser = Parser(
        prog="trio-echo",
        description="A TCP echo server built on trio.  Durations take ms or s "
        "(500ms, 1.5s; a plain number is seconds); sizes take B, KiB, MiB or GiB "
        "(64KiB; a plain number is bytes).",
        epilog="SIGINT or SIGTERM shuts down gracefully; a second one stops at once.  "
        "Every option can also be set by the environment variable shown with it "
        "(flags take 1/0, true/false, yes/no, on/off; --fd a comma-separated list); "
        "the command line wins; other TRIO_ECHO_* variables are ignored with a warning.",
    )
    add = parser.add_argument
    add(
        "--host", help=f"address to bind; '' or '*' binds every address (default: {listener.host})"
    )
    add(
        "--port",
        type=int,
        help=f"TCP port; 0 picks a free one, logged at start (default: {listener.port})",
    )
    add(
        "--fd",
        type=DESCRIPTOR,
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
    add("--rounds", type=int, metavar="N", help="echo N messages per connection, then close")
    add(
        "--framing",
        choices=FRAMINGS,
        default=connection.framing,
        help="raw: a message is one receive; line: a message ends in \\n (default: %(default)s)",
    )
    add(
        "--max-message",
        type=SIZE,
        metavar="SIZE",
        default=connection.max_message,
        help="largest message (raw: per receive; line: longest line) (default: %(default)s)",
    )
    add(
        "--max-connections",
        type=int,
        metavar="N",
        default=listener.max_connections,
        help="connections open at once, per worker; more wait in the backlog "
        "(default: %(default)s)",
    )
    add(
        "--idle-timeout",
        type=DURATION,
        metavar="DURATION",
        default=connection.idle_timeout,
        help="close a connection idle this long; 0 disables (default: %(default)s s)",
    )
    add(
        "--grace",
        type=DURATION,
        metavar="DURATION",
        default=listener.grace,
        help="on shutdown, time allowed to finish echoes in progress (default: %(default)s s)",
    )
    add(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1/v2 header (HAProxy send-proxy, AWS NLB) on every "
        "connection and report the client it names",
    )
    add(
        "--proxy-timeout",
        type=DURATION,
        metavar="DURATION",
        help="with --proxy-protocol, time allowed for the header "
        f"(default: {listener.proxy_timeout} s)",
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
        type=DURATION,
        metavar="DURATION",
        help="close clients that have not completed the TLS handshake by then "
        f"(needs --certfile; default: {handshake} s)",
    )
    add(
        "--stats-interval",
        type=POSITIVE_DURATION,
        metavar="DURATION",
        help="log the server's statistics every DURATION (> 0; default: off)",
    )
    add_fault_options(parser)
    add_transport_options(parser, RATE, SIZE)
    add_operations_options(parser)
    add("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")
    add(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="json: one JSON object per line, start-up errors included (default: %(default)s)",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add(
        "--worker-timeout",
        type=DURATION,
        metavar="DURATION",
        default=WORKER_TIMEOUT,
        help="with --workers: kill and restart a worker whose event loop has not "
        "reported for DURATION (0: never; default: %(default)s s)",
    )
    # Internal: set by the --workers parent on the command lines of its workers.
    add("--worker-of", metavar="PID:NUMBER", help=argparse.SUPPRESS)
    add("--heartbeat-fd", type=DESCRIPTOR, metavar="N", help=argparse.SUPPRESS)
    document_environment(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the server's configuration from parsed arguments.

    Raises:
      ValueError, TypeError: from the config validators, naming the field; or
        for options that need another one (``--keyfile`` without ``--certfile``,
        ``--proxy-timeout`` without ``--proxy-protocol``).
    """
    defaults = ListenerConfig()
    host = defaults.host if args.host is None else args.host
    host = None if host in ("", "*") else host
    if args.proxy_timeout is not None and not args.proxy_protocol:
        raise ValueError("proxy_timeout applies only with --proxy-protocol")
    tls_options = {
        "keyfile": args.keyfile,
        "client_ca": args.tls_client_ca,
        "handshake_timeout": args.tls_handshake_timeout,
        "min_version": args.tls_min_version,
    }
    given = {name: value for name, value in tls_options.items() if value is not None}
    tls = None
    if args.certfile is not None:
        tls = TLSConfig(certfile=args.certfile, **given)
    elif given:
        raise ValueError(
            "certfile is required by --keyfile, --tls-client-ca, --tls-min-version "
            "and --tls-handshake-timeout"
        )
    tcp, udp = transport_config(args)
    return ServerConfig(
        tls=tls,
        udp=udp,
        listener=ListenerConfig(
            host=host,
            port=defaults.port if args.port is None else args.port,
            max_connections=args.max_connections,
            grace=args.grace,
            proxy_protocol=args.proxy_protocol,
            proxy_timeout=(
                defaults.proxy_timeout if args.proxy_timeout is None else args.proxy_timeout
            ),
            tcp=tcp,
            unix=args.unix,
            unix_mode=args.unix_mode,
            proxy_trusted=args.proxy_trusted,
            max_connections_per_ip=args.max_connections_per_ip,
            connection_rate_per_ip=args.connection_rate_per_ip,
        ),
        connection=ConnectionConfig(
            rounds=args.rounds,
            framing=args.framing,
            max_message=args.max_message,
            idle_timeout=None if args.idle_timeout == 0 else args.idle_timeout,
            faults=Faults(**{name: getattr(args, name) for name in _fault_fields()}),
            hello=args.hello,
        ),
        worker=_worker_number(args.worker_of),
    )


def _worker_number(worker_of: str | None) -> int:
    """The NUMBER of ``--worker-of PID:NUMBER`` (0 if absent or malformed: that
    is a usage error that options_from_args reports)."""
    number = (worker_of or "").partition(":")[2]
    return int(number) if number.isdigit() else 0


def _fault_fields() -> list[str]:
    return [option[2:].replace("-", "_") for option, _, _ in FAULT_OPTIONS]


def options_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, arguments: Sequence[str]
) -> ProcessOptions:
    """The process options in *args*; a usage error (exit 2) for invalid combinations."""
    worker_of = None
    if args.worker_of is not None:
        pid, _, number = args.worker_of.partition(":")
        if not (pid.isdigit() and number.isdigit()):
            parser.error(f"argument --worker-of: expected PID:NUMBER, got {args.worker_of!r}")
        worker_of = int(pid), int(number)
    if args.workers < 1:
        parser.error(f"argument --workers: workers must be >= 1, got {args.workers}")
    if args.workers > 1 and not (has_reuseport() and hasattr(os, "pidfd_open")):
        parser.error(
            "argument --workers: needs SO_REUSEPORT and pidfd_open (Linux), "
            "which this platform does not have"
        )
    # A worker's command line repeats the parent's --host/--port next to its --fd.
    if args.fd and worker_of is None and (args.host is not None or args.port is not None):
        parser.error("argument --fd: not allowed with --host or --port")
    check_transport_options(parser, args)
    if args.metrics is not None and (missing := check_metrics_available()):
        parser.error(f"argument --metrics: {missing}")
    return ProcessOptions(
        metrics=args.metrics,
        stats_fd=args.stats_fd,
        arguments=tuple(arguments),
        workers=args.workers,
        fds=None if args.fd is None else tuple(args.fd),
        worker_of=worker_of,
        stats_interval=args.stats_interval,
        log_level=args.log_level,
        log_format=args.log_format,
        worker_timeout=args.worker_timeout or None,
        heartbeat_fd=args.heartbeat_fd,
    )


# Config fields whose option is not simply --field-name.
OPTION_FOR_FIELD = {
    "client_ca": "--tls-client-ca",
    "handshake_timeout": "--tls-handshake-timeout",
    **FIELD_OPTIONS,
    "min_version": "--tls-min-version",
}


def _option_for(message: str) -> str:
    """The command-line option a validator's message is about (it starts with the field)."""
    field = message.split(" ", 1)[0]
    return OPTION_FOR_FIELD.get(field, "--" + field.replace("_", "-"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trio-echo`` command; return the exit status.

    ``trio-echo bench ...`` runs the measuring client instead
    (:func:`trio_echo._bench.cli.main`).

    Bad arguments exit at once with status 2 (:exc:`SystemExit`), one line on
    stderr naming the option; everything else is :func:`trio_echo._roles.run`'s.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    # ``trio-echo bench ...`` is the measuring client; anything else is the server.
    if arguments[:1] == ["bench"]:
        from ._bench.cli import main as bench_main

        return bench_main(arguments[1:])
    parser = build_parser()
    # TRIO_ECHO_* variables become arguments before the command line's: it wins.
    from_environment, warnings = arguments_from_environment(parser, os.environ, arguments)
    args = parser.parse_args([*from_environment, *arguments])
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(f"argument {_option_for(str(exc))}: {exc}")
    options = attrs.evolve(options_from_args(parser, args, arguments), warnings=tuple(warnings))
    # Imported only now: it brings in trio, which --help and --version do not need.
    from ._roles import run

    return run(config, options)
