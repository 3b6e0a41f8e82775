"""``serve()``: bind the endpoints (TCP, UDP, Unix), load TLS, run an :class:`EchoServer`."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ._config import ServerConfig
from ._endpoints import bind_other_endpoints
from ._server import EchoServer
from ._tls import server_context

__all__ = ["serve"]


async def serve(
    config: ServerConfig,
    *,
    listeners: Sequence[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[EchoServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an echo server until it is shut down or cancelled.

    With ``config.tls`` set, loads the certificate first and serves echo
    over TLS (see :class:`TLSConfig`).  Binds ``config.listener.host``/``port``
    (``port=0`` picks a free port; ``host=None`` binds every address,
    possibly on different ports for IPv4 and IPv6 -- see
    :attr:`EchoServer.addresses`), logs ``listening on HOST:PORT`` for each,
    and runs one task per connection.

    With ``config.udp``, also serves UDP echo on each TCP address (or, with
    ``listener.tcp`` off, on ``host``/``port``): see :class:`~trio_echo.UDPConfig`.  With
    ``listener.unix``, also serves stream echo on that Unix socket (replacing a
    stale socket file, refusing a live one with :exc:`OSError` ``EADDRINUSE``),
    and removes the file when it stops.  See :attr:`EchoServer.udp_addresses`
    and :attr:`EchoServer.unix_path`.

    With *listeners*, serves on those instead of binding, and ignores
    ``host``, ``port`` and ``backlog``: this is how a socket bound with
    ``SO_REUSEPORT`` or inherited from systemd is served.  Wrap a listening
    stdlib socket as ``trio.SocketListener(trio.socket.from_stdlib_socket(sock))``.
    :func:`serve` owns them from then on and closes them when it stops.

    Usage::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_echo.serve, config)
            ...  # connect to ("127.0.0.1", server.port)
            await server.shutdown()

    Returns:
      After :meth:`EchoServer.shutdown` has closed every connection.

    Cancellation:
      Cancelling the scope running :func:`serve` closes the listeners and every
      connection at once (close reason ``cancelled``); no task outlives it.

    Error handling:
      An empty *listeners* raises :exc:`ValueError`.  Binding errors (address
      in use, permission denied, unknown host) raise :exc:`OSError` before the
      server starts, and so do TLS files that are missing or invalid
      (:exc:`ssl.SSLError` is an ``OSError``).  A
      connection's errors end only that connection, with a close reason (a
      TLS handshake that fails or does not finish within
      ``tls.handshake_timeout``: ``tls-error``).  ``accept()`` running out of file
      descriptors or memory is logged and retried after 100 ms.
    """
    if listeners is not None and not listeners:
        raise ValueError("listeners must hold at least one trio.SocketListener")
    context = None if config.tls is None else server_context(config.tls)
    listener_config = config.listener
    if listeners is None:
        listeners = []
        if listener_config.tcp:
            listeners = await trio.open_tcp_listeners(
                listener_config.port, host=listener_config.host, backlog=listener_config.backlog
            )
    listeners = list(listeners)
    try:
        udp_sockets, unix_listener, unix_file = bind_other_endpoints(config, listeners)
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise
    if unix_listener is not None:
        listeners.append(unix_listener)
    server = EchoServer(
        config, listeners, ssl_context=context, udp_sockets=udp_sockets, unix_file=unix_file
    )
    await server.run(task_status)
