"""``serve_in_thread()``: an echo server in a background thread, for code that is not trio."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import trio

from ._config import Faults, ListenerConfig, ServerConfig
from ._overrides import replace_fields
from ._serve import serve
from ._server import EchoServer
from ._stats import ServerStatistics

__all__ = ["ThreadedEchoServer", "serve_in_thread"]

#: The config used when none is given: loopback only, a free port.
DEFAULT_CONFIG: Final = ServerConfig(listener=ListenerConfig(host="127.0.0.1", port=0))

# How long a call into the server thread may take before it is taken as hung.
# Those calls are a counter snapshot or setting an event: microseconds.
CALL_TIMEOUT: Final = 10.0

# While waiting for such a call, how often to check that the thread still runs.
THREAD_CHECK_INTERVAL: Final = 0.1

_T = TypeVar("_T")


class _Started:
    """The ``task_status`` handed to :func:`serve`: records the handle, wakes the caller."""

    def __init__(self, ready: threading.Event) -> None:
        self._ready = ready
        self.server: EchoServer | None = None
        self.token: trio.lowlevel.TrioToken | None = None

    def started(self, value: EchoServer | None = None) -> None:
        self.server = value
        self.token = trio.lowlevel.current_trio_token()
        self._ready.set()


class ThreadedEchoServer:
    """A running echo server in its own thread: what :func:`serve_in_thread` yields.

    Its methods are synchronous and may be called from any thread other than
    the server's own, including from inside an asyncio or trio event loop
    (each call takes microseconds, except :meth:`shutdown`, which waits).
    The handle stays usable once the server has stopped: ``host``, ``port``,
    ``addresses`` keep their values and :meth:`statistics` returns the final
    counters.
    """

    def __init__(
        self,
        server: EchoServer,
        token: trio.lowlevel.TrioToken,
        thread: threading.Thread,
        errors: list[BaseException],
    ) -> None:
        # Built by serve_in_thread() once the server listens; not public.
        self._server = server
        self._token = token
        self._thread = thread
        # Filled by the server thread if its run ends with an error.
        self._errors = errors
        self._final: ServerStatistics | None = None

    @property
    def config(self) -> ServerConfig:
        """The config the server runs with (overrides applied)."""
        return self._server.config

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every bound ``(host, port)``: one per listener (IPv4 and IPv6 may differ)."""
        return self._server.addresses

    @property
    def udp_addresses(self) -> tuple[tuple[str, int], ...]:
        """Every bound UDP ``(host, port)``; empty when no UDP is served (issue 15)."""
        return self._server.udp_addresses

    @property
    def unix_path(self) -> str | None:
        """The path of the Unix socket served, ``None`` if none (issue 15)."""
        return self._server.unix_path

    @property
    def host(self) -> str:
        """The bound address of the first listener (``"127.0.0.1"`` by default)."""
        return self._server.host

    @property
    def port(self) -> int:
        """The bound port of the first listener (the real one when configured as ``0``)."""
        return self._server.port

    def statistics(self) -> ServerStatistics:
        """A frozen snapshot of the server's counters, open connections included.

        Taken in the server's thread (the counters are only consistent there);
        once the server has stopped, its final counters.

        Raises:
          RuntimeError: called from the server's own thread.
        """
        if self._final is not None:
            return self._final
        try:
            return self._call_in_server(self._server.statistics)
        except trio.RunFinishedError:
            # The server stopped (or crashed) between the check and the call.
            self._join()
            return self._server.statistics()

    def set_faults(self, faults: Faults | None, *, existing: bool = False) -> None:
        """As :meth:`EchoServer.set_faults`, run in the server's thread: when it
        returns, connections opened from then on get *faults*.

        Raises:
          TypeError: *faults* is neither a :class:`Faults` nor ``None``.
          trio.RunFinishedError: the server has stopped.
          RuntimeError: called from the server's own thread.
        """
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError(f"faults must be a Faults or None, not {type(faults).__name__}")
        if self._final is not None:
            raise trio.RunFinishedError("the server has stopped")
        self._call_in_server(functools.partial(self._server.set_faults, faults, existing=existing))

    @property
    def faults(self) -> Faults | None:
        """As :attr:`EchoServer.faults` (read in the server's thread)."""
        if self._final is not None:
            return self._server.faults
        return self._call_in_server(lambda: self._server.faults)

    def shutdown(self) -> None:
        """Shut the server down gracefully and wait for its thread to end.

        As :meth:`EchoServer.shutdown`: listeners close at once; connections
        waiting for input stop; one echoing a message finishes it (within the
        config's ``grace``).  Idempotent.  Leaving the :func:`serve_in_thread`
        block calls it.

        Raises:
          BaseException: whatever ended the server's thread with an error
            (once, on the first call that finds it).
          RuntimeError: called from the server's own thread.
        """
        if self._final is None:
            # Already over if that raises: join and report how it ended.
            with contextlib.suppress(trio.RunFinishedError):
                self._call_in_server(self._server.request_shutdown)
        self._join()
        if self._errors:
            raise self._errors.pop()

    def _join(self) -> None:
        self._thread.join()
        if self._final is None:
            self._final = self._server.statistics()

    def _call_in_server(self, func: Callable[[], _T]) -> _T:
        """Run *func* in the server's trio thread and return its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("ThreadedEchoServer methods block: call them from another thread")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(func())
            except BaseException as exc:  # pragma: no cover - both functions never raise
                future.set_exception(exc)

        self._token.run_sync_soon(call)
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            try:
                # Done within microseconds while the run lives; the short wait
                # only notices a run that ended before it got to the call.
                return future.result(THREAD_CHECK_INTERVAL)
            except TimeoutError:
                if not self._thread.is_alive():
                    raise trio.RunFinishedError("the server's thread has ended") from None
                if time.monotonic() > deadline:
                    raise

    def __repr__(self) -> str:
        state = "stopped" if self._final is not None else "running"
        return f"<ThreadedEchoServer {state} on {self.host}:{self.port}>"


def _run_server(
    config: ServerConfig, status: _Started, ready: threading.Event, errors: list[BaseException]
) -> None:
    """The server thread's body: one trio run around :func:`serve`; errors kept for the caller."""
    try:
        trio.run(_serve, config, status)
    except BaseException as exc:
        errors.append(exc)
    finally:
        ready.set()  # a start error must not leave the caller waiting


async def _serve(config: ServerConfig, status: _Started) -> None:
    await serve(config, task_status=status)


@contextlib.contextmanager
def serve_in_thread(
    config: ServerConfig | None = None, **overrides: Any
) -> Iterator[ThreadedEchoServer]:
    """Run an echo server in a background thread (its own trio run) for the ``with`` block.

    Usable from any Python code -- synchronous, ``unittest``, asyncio, anyio,
    another trio run -- with no test framework::

        with trio_echo.serve_in_thread(rounds=3) as server:
            sock = socket.create_connection((server.host, server.port))

    *config* defaults to a server on ``127.0.0.1`` and a free port (``port=0``).
    *overrides* are config fields by their bare names, wherever they live in
    :class:`ServerConfig` (``rounds=3``, ``framing="line"``, ``grace=0``), as
    ``echo_server_factory`` takes them; with *config* too, they apply on top of
    it.

    When ``__enter__`` returns, the port accepts connections.  Leaving the
    block shuts the server down gracefully (see
    :meth:`ThreadedEchoServer.shutdown`) and joins the thread.

    Error handling:
      Start errors raise in the caller's thread, with the types :func:`serve`
      raises: :exc:`TypeError`/:exc:`ValueError` for an unknown field or a bad
      value (naming the field), :exc:`OSError` for an address in use or a TLS
      file that is missing or invalid.  An error that ends the server thread
      later is raised when the block is left (or by ``shutdown()``), never
      dropped; if the block itself raised, that exception is its
      ``__context__``.

    Cancellation:
      The server is not tied to any caller's cancellation: only leaving the
      block (or ``shutdown()``) stops it.  A ``KeyboardInterrupt`` in the
      block still shuts the server down and joins its thread.
    """
    resolved = DEFAULT_CONFIG if config is None else config
    if overrides:
        resolved = replace_fields(resolved, **overrides)
    ready = threading.Event()
    status = _Started(ready)
    errors: list[BaseException] = []
    thread = threading.Thread(
        target=_run_server,
        args=(resolved, status, ready, errors),
        name="trio-echo server",
        # A server left running must not keep the interpreter from exiting.
        daemon=True,
    )
    thread.start()
    ready.wait()
    if status.server is None or status.token is None:
        thread.join()
        raise errors.pop()
    handle = ThreadedEchoServer(status.server, status.token, thread, errors)
    try:
        yield handle
    finally:
        handle.shutdown()
