"""trio-echo: an echo server (TCP, TLS, UDP, Unix sockets) built on trio's structured concurrency.

Run it from the shell (``trio-echo --rounds 3``), embed it::

    server = await nursery.start(trio_echo.serve, trio_echo.ServerConfig())

run one in a background thread from any Python code (sync, asyncio, unittest)::

    with trio_echo.serve_in_thread(rounds=3) as server:
        ...  # connect to (server.host, server.port)

or start servers from any pytest suite with the fixtures of
:mod:`trio_echo.pytest_plugin` (``pip install '/path/to/trio-echo[pytest]'``).

Measure any echo server with ``trio-echo bench HOST:PORT``, or from trio::

    address = trio_echo.parse_address("127.0.0.1:7")
    result = await trio_echo.bench(trio_echo.BenchConfig(address=address, connections=8))
"""

# The names below are imported on first use (PEP 562), so that importing the
# package -- which the ``trio-echo`` command does before it parses its
# arguments -- does not import trio: ``--help`` and ``--version`` stay instant.
import importlib as _importlib
import typing as _typing

from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._bench.address import parse_address
    from ._bench.config import BenchConfig
    from ._bench.result import BenchResult, DatagramCounts, LatencySummary
    from ._bench.run import ServerUnreachable, bench
    from ._config import (
        ConnectionConfig,
        Faults,
        Framing,
        ListenerConfig,
        ServerConfig,
        TLSConfig,
        UDPConfig,
    )
    from ._protocol import EchoProtocol
    from ._serve import serve
    from ._server import EchoServer
    from ._stats import ServerStatistics, UDPStatistics
    from ._thread import ThreadedEchoServer, serve_in_thread

__all__ = [
    "BenchConfig",
    "BenchResult",
    "ConnectionConfig",
    "DatagramCounts",
    "EchoProtocol",
    "EchoServer",
    "Faults",
    "Framing",
    "LatencySummary",
    "ListenerConfig",
    "ServerConfig",
    "ServerStatistics",
    "ServerUnreachable",
    "TLSConfig",
    "ThreadedEchoServer",
    "UDPConfig",
    "UDPStatistics",
    "__version__",
    "bench",
    "parse_address",
    "serve",
    "serve_in_thread",
]

# Where each public name is defined.
_MODULE_OF = {
    "BenchConfig": "._bench.config",
    "BenchResult": "._bench.result",
    "DatagramCounts": "._bench.result",
    "LatencySummary": "._bench.result",
    "ServerUnreachable": "._bench.run",
    "bench": "._bench.run",
    "parse_address": "._bench.address",
    "ConnectionConfig": "._config",
    "EchoProtocol": "._protocol",
    "EchoServer": "._server",
    "Faults": "._config",
    "Framing": "._config",
    "ListenerConfig": "._config",
    "ServerConfig": "._config",
    "ServerStatistics": "._stats",
    "TLSConfig": "._config",
    "UDPConfig": "._config",
    "UDPStatistics": "._stats",
    "ThreadedEchoServer": "._thread",
    "serve": "._serve",
    "serve_in_thread": "._thread",
}


def __getattr__(name: str) -> object:
    """Import a public name on first use, then keep it as a module attribute."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
