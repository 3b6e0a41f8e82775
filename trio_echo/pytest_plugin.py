"""pytest fixtures that start trio-echo servers, for testing network clients.

Installed with ``pip install 'trio-echo[pytest]'``, this plugin is registered
through the ``pytest11`` entry point, so a test suite gets the fixtures with
no conftest.  Both are pytest-trio fixtures (declared with
:func:`pytest_trio.trio_fixture`), so they work in trio mode and in tests
marked ``@pytest.mark.trio``, and they are function-scoped::

    async def test_client(echo_server):
        stream = await trio.open_tcp_stream("127.0.0.1", echo_server.port)
        ...

    async def test_client_gets_eof(echo_server_factory):
        server = await echo_server_factory(rounds=3, framing="line")
        ...

UDP echo and a Unix socket are config fields like any other::

    server = await echo_server_factory(udp=trio_echo.UDPConfig())   # server.udp_addresses
    server = await echo_server_factory(tcp=False, unix=str(tmp_path / "echo.sock"))

Every server listens on 127.0.0.1 and an ephemeral port, and is stopped
(cancelled: open connections close with reason ``cancelled``) when the test
ends.  A server that fails fails the test; it does not hang it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, Protocol, TypeVar, cast

import pytest
import trio

from ._config import ListenerConfig, ServerConfig, replace_fields
from ._server import EchoServer, serve

__all__ = ["EchoServerFactory", "echo_server", "echo_server_factory"]

_F = TypeVar("_F", bound=Callable[..., Any])

MISSING_PYTEST_TRIO = "trio-echo's fixtures need pytest-trio: pip install 'trio-echo[pytest]'"


def _unavailable(func: _F) -> _F:
    """Without pytest-trio, a fixture that fails the test that uses it, saying why."""

    @functools.wraps(func)
    def fail(*args: object, **kwargs: object) -> NoReturn:
        pytest.fail(MISSING_PYTEST_TRIO, pytrace=False)

    return cast(_F, pytest.fixture(fail))


_trio_fixture: Callable[[_F], _F]
try:
    import pytest_trio
except ImportError:
    # Installed without the [pytest] extra: pytest loads this plugin anyway
    # (entry point), and must keep working for suites that never use it.
    _trio_fixture = _unavailable
else:
    # pytest-trio ships no type information; this is its decorator's real shape.
    _trio_fixture = pytest_trio.trio_fixture


class EchoServerFactory(Protocol):
    """The type of the ``echo_server_factory`` fixture, for annotating tests."""

    async def __call__(self, **overrides: Any) -> EchoServer:
        """Start a server and return its handle once it is listening.

        *overrides* are config fields by their bare names, wherever they live
        in :class:`~trio_echo.ServerConfig` (``rounds=3``, ``framing="line"``,
        ``max_connections=2``, ``tls=TLSConfig(...)``); the rest keep their
        defaults, except ``host="127.0.0.1"`` and ``port=0``.

        Raises:
          TypeError: a name no config class has, or more than one has.
          ValueError, TypeError: a value the config validators reject,
            naming the field.
          OSError: the server cannot bind or load its TLS files.

        Cancellation:
          The server runs in the fixture's nursery, not the caller's task; it
          stops when the test ends.
        """
        ...


@_trio_fixture
async def echo_server_factory() -> AsyncIterator[EchoServerFactory]:
    """An async callable that starts echo servers (see :class:`EchoServerFactory`)."""
    defaults = ServerConfig(listener=ListenerConfig(host="127.0.0.1", port=0))
    async with trio.open_nursery() as nursery:

        async def start(**overrides: Any) -> EchoServer:
            config = replace_fields(defaults, **overrides)
            server: EchoServer = await nursery.start(serve, config)
            return server

        yield start
        # pytest-trio has cancelled the test by now if a server failed; the
        # failure itself propagates out of this nursery and fails the test.
        nursery.cancel_scope.cancel()


@_trio_fixture
async def echo_server(echo_server_factory: EchoServerFactory) -> EchoServer:
    """A running echo server with default settings on 127.0.0.1 and an ephemeral port.

    The value is the :class:`~trio_echo.EchoServer` handle: ``port``,
    ``addresses``, ``statistics()``.
    """
    return await echo_server_factory()
