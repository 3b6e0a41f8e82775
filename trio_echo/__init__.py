"""trio-echo: a TCP echo server built on trio's structured concurrency.

Run it from the shell (``trio-echo --rounds 3``), embed it::

    server = await nursery.start(trio_echo.serve, trio_echo.ServerConfig())

or start servers from a pytest-trio suite with the fixtures of
:mod:`trio_echo.pytest_plugin` (``pip install 'trio-echo[pytest]'``).
"""

from ._config import (
    ConnectionConfig,
    Faults,
    Framing,
    ListenerConfig,
    ServerConfig,
    TLSConfig,
)
from ._protocol import EchoProtocol
from ._server import EchoServer, serve
from ._stats import ServerStatistics
from ._version import __version__

__all__ = [
    "ConnectionConfig",
    "EchoProtocol",
    "EchoServer",
    "Faults",
    "Framing",
    "ListenerConfig",
    "ServerConfig",
    "ServerStatistics",
    "TLSConfig",
    "__version__",
    "serve",
]
