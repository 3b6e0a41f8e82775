"""pytest fixtures that start trio-echo servers, in every kind of test.

Installed with ``pip install '/path/to/trio-echo[pytest]'`` (a checkout or a
built wheel), this plugin is registered through the ``pytest11`` entry point,
so a test suite gets the fixtures with no conftest:

- ``echo_server``: a running server with default settings on 127.0.0.1 and
  an ephemeral port; the handle has ``host``, ``port``, ``addresses``,
  ``statistics()``.
- ``echo_server_factory``: starts servers with config fields by bare name
  (``rounds=3``, ``framing="line"``); every one stops when the test ends.
- ``echo_server_session_factory``: the same, session-scoped, for a server
  shared by many tests (always in a thread).

Where a server runs depends on the test.  In a trio test -- one pytest-trio
runs: marked ``@pytest.mark.trio``, or ``async def`` under ``trio_mode`` -- it
runs in the test's own trio run (pytest-trio's ``trio_fixture``), so it follows
``autojump_clock``; the factory is then ``async`` and returns an
:class:`~trio_echo.EchoServer`.  In every other test (plain functions,
``unittest.TestCase``, pytest-asyncio, anyio with either backend) it runs in a
background thread (:func:`~trio_echo.serve_in_thread`); the factory is then a
plain callable returning a :class:`~trio_echo.ThreadedEchoServer`.  The
fixtures themselves are synchronous, so no async plugin ever claims them.  A
``unittest.TestCase`` run by pytest gets them through an autouse fixture method
(``def _server(self, echo_server): self.server = echo_server``).

UDP echo and a Unix socket are config fields like any other::

    server = await echo_server_factory(udp=trio_echo.UDPConfig())   # server.udp_addresses
    server = await echo_server_factory(tcp=False, unix=str(tmp_path / "echo.sock"))

(``await`` in a trio test; a plain call elsewhere, where the thread's handle
reports the same ``udp_addresses`` and ``unix_path``.)

``TRIO_ECHO_TEST_HOST`` and ``TRIO_ECHO_TEST_PORT`` replace the default
host (127.0.0.1) and port (0, a free one) of every server the fixtures start;
keywords given to a factory still win.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import ExitStack
from typing import Any, Protocol, TypeVar

import pytest
import trio

from ._config import ListenerConfig, ServerConfig
from ._overrides import replace_fields
from ._serve import serve
from ._server import EchoServer
from ._thread import ThreadedEchoServer, serve_in_thread

__all__ = [
    "HOST_VARIABLE",
    "PORT_VARIABLE",
    "EchoServerFactory",
    "ThreadedEchoServerFactory",
    "echo_server",
    "echo_server_factory",
    "echo_server_session_factory",
]

#: Environment variables that pin the default address of the fixtures' servers.
HOST_VARIABLE = "TRIO_ECHO_TEST_HOST"
PORT_VARIABLE = "TRIO_ECHO_TEST_PORT"

INSTALL = "pip install pytest-trio (or pip install '/path/to/trio-echo[pytest-trio]')"
MISSING_PYTEST_TRIO = f"trio-echo: this trio test needs pytest-trio to run its servers: {INSTALL}"

_F = TypeVar("_F", bound=Callable[..., Any])

# The fixtures that run in a trio test's own run (defined below when pytest-trio is there).
TRIO_FACTORY = "_trio_echo_server_factory"
TRIO_SERVER = "_trio_echo_server"


class EchoServerFactory(Protocol):
    """The type of ``echo_server_factory`` in a trio test, for annotating tests."""

    async def __call__(self, **overrides: Any) -> EchoServer:
        """Start a server in the test's trio run; return its handle once it listens.

        *overrides* are config fields by their bare names, wherever they live
        in :class:`~trio_echo.ServerConfig` (``rounds=3``, ``framing="line"``,
        ``max_connections=2``, ``tls=TLSConfig(...)``); the rest keep their
        defaults, except host and port (see the module docstring).

        Raises:
          TypeError: a name no config class has, or more than one has.
          ValueError, TypeError: a value the config validators reject,
            naming the field.
          OSError: the server cannot bind or load its TLS files.

        Cancellation:
          The server runs in the fixture's nursery, not the caller's task; it
          is cancelled when the test ends.
        """
        ...


class ThreadedEchoServerFactory(Protocol):
    """The type of ``echo_server_factory`` outside trio tests, and of the session factory."""

    def __call__(self, **overrides: Any) -> ThreadedEchoServer:
        """Start a server in a thread; return its handle once it listens.

        Keywords and errors as :class:`EchoServerFactory`, raised in the
        caller's thread.  Each server shuts down gracefully, and its thread is
        joined, when the fixture's scope ends; an error that ended a server's
        thread is raised then, as an error of the test's teardown.
        """
        ...


def default_config() -> ServerConfig:
    """127.0.0.1 and a free port, or the address pinned by the environment.

    A port that is not a number from 0 to 65535 fails the test with one line
    saying so (no traceback).
    """
    host = os.environ.get(HOST_VARIABLE) or "127.0.0.1"
    port_text = os.environ.get(PORT_VARIABLE) or "0"
    try:
        return ServerConfig(listener=ListenerConfig(host=host, port=int(port_text)))
    except ValueError:
        pytest.fail(
            f"trio-echo: {PORT_VARIABLE}={port_text!r} is not a port: "
            "set it to a number from 0 to 65535, or unset it",
            pytrace=False,
        )


class _ThreadedServers:
    """A factory of threaded servers, all shut down by :meth:`close`."""

    def __init__(self, defaults: ServerConfig) -> None:
        self._defaults = defaults
        self._stack = ExitStack()

    def __call__(self, **overrides: Any) -> ThreadedEchoServer:
        config = replace_fields(self._defaults, **overrides)
        return self._stack.enter_context(serve_in_thread(config))

    def close(self) -> None:
        """Shut every server down, last started first, even if one raises; then raise."""
        self._stack.close()


def _is_trio_test(request: pytest.FixtureRequest) -> bool:
    """Whether this is a trio test: one pytest-trio runs, or would run if installed.

    pytest-trio runs a test's trio fixtures only when the test has the ``trio``
    marker, which it adds to ``async def`` tests in trio mode at collection.
    Without pytest-trio nobody adds it, so a trio-mode ``async def`` test is
    recognised here from the ini option, to get the one-line message rather
    than pytest's generic "async def functions are not natively supported".
    """
    if request.node.get_closest_marker("trio") is not None:
        return True
    if _HAVE_PYTEST_TRIO:
        return False
    try:
        trio_mode = bool(request.config.getini("trio_mode"))
    except ValueError:  # no plugin registered the option
        return False
    return trio_mode and inspect.iscoroutinefunction(getattr(request.node, "obj", None))


@pytest.fixture
def echo_server_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Starts echo servers: async in a trio test, a plain callable elsewhere.

    See :class:`EchoServerFactory` (trio tests) and
    :class:`ThreadedEchoServerFactory` (every other test).
    """
    if _is_trio_test(request):
        # pytest-trio's placeholder: it resolves it inside the test's trio run.
        yield _trio_fixture_value(request, TRIO_FACTORY)
        return
    servers = _ThreadedServers(default_config())
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def echo_server(request: pytest.FixtureRequest) -> Any:
    """A running echo server: default settings, 127.0.0.1, an ephemeral port.

    An :class:`~trio_echo.EchoServer` in a trio test, a
    :class:`~trio_echo.ThreadedEchoServer` elsewhere: ``host``, ``port``,
    ``addresses``, ``statistics()`` in both.
    """
    if _is_trio_test(request):
        return _trio_fixture_value(request, TRIO_SERVER)
    factory: ThreadedEchoServerFactory = request.getfixturevalue("echo_server_factory")
    return factory()


@pytest.fixture(scope="session")
def echo_server_session_factory() -> Iterator[ThreadedEchoServerFactory]:
    """Starts threaded echo servers that live until the end of the test session.

    For one server shared by many tests, of any kind::

        @pytest.fixture(scope="session")
        def shared_server(echo_server_session_factory):
            return echo_server_session_factory(framing="line")
    """
    servers = _ThreadedServers(default_config())
    try:
        yield servers
    finally:
        servers.close()


def _trio_fixture_value(request: pytest.FixtureRequest, name: str) -> Any:
    if not _HAVE_PYTEST_TRIO:
        pytest.fail(MISSING_PYTEST_TRIO, pytrace=False)
    return request.getfixturevalue(name)


try:
    import pytest_trio
except ImportError:
    # Installed without pytest-trio: everything but trio tests works, and a
    # trio test that asks for a server is failed with MISSING_PYTEST_TRIO.
    _HAVE_PYTEST_TRIO = False

    def pytest_addoption(parser: pytest.Parser) -> None:
        # pytest-trio's option, so that a suite configured for it reaches the
        # fixtures (and their one-line message) under --strict-config.
        help_text = f"run async tests with trio (needs pytest-trio: {INSTALL})"
        parser.addini("trio_mode", help_text, type="bool", default=False)

    def pytest_configure(config: pytest.Config) -> None:
        # Likewise for `@pytest.mark.trio` under --strict-markers.
        config.addinivalue_line("markers", f"trio: needs pytest-trio ({INSTALL})")

else:
    _HAVE_PYTEST_TRIO = True
    # pytest-trio ships no type information; this is its decorator's real shape.
    _trio_fixture: Callable[[_F], _F] = pytest_trio.trio_fixture

    # Private: reached only through echo_server_factory / echo_server.  They
    # are plain functions that return the async generator / coroutine that
    # pytest-trio runs: pytest-asyncio's auto mode claims every `async def`
    # fixture, and would run these in asyncio (Nursery misnesting) if they were.
    @_trio_fixture
    def _trio_echo_server_factory() -> AsyncIterator[EchoServerFactory]:
        """Servers in the test's own trio run, cancelled when the test ends."""
        return _servers_in_this_run(default_config())

    @_trio_fixture
    def _trio_echo_server(
        _trio_echo_server_factory: EchoServerFactory,
    ) -> Coroutine[Any, Any, EchoServer]:
        """A default server in the test's own trio run."""
        return _trio_echo_server_factory()


async def _servers_in_this_run(defaults: ServerConfig) -> AsyncIterator[EchoServerFactory]:
    """The trio factory fixture's body: start servers in a nursery of the test's run."""
    async with trio.open_nursery() as nursery:

        async def start(**overrides: Any) -> EchoServer:
            config = replace_fields(defaults, **overrides)
            server: EchoServer = await nursery.start(serve, config)
            return server

        yield start
        # pytest-trio has cancelled the test by now if a server failed; the
        # failure itself propagates out of this nursery and fails the test.
        nursery.cancel_scope.cancel()
