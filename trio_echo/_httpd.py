"""The operations listener (``--metrics``): ``/metrics``, ``/healthz``, ``/readyz`` over HTTP/1.1.

HTTP is parsed by h11 (sans-IO); this module only moves bytes and answers
three paths.  It runs next to the echo server but shares nothing with it but
the event loop, and everything a client can make it spend is bounded: at
most :data:`MAX_CLIENTS` connections at once (more are closed at once), a
request head of at most :data:`MAX_HEAD` bytes (``431``), a request body of
at most :data:`MAX_BODY` bytes (``413``), :data:`REQUEST_TIMEOUT` seconds for
a whole request (a slowloris is cut off), :data:`KEEPALIVE_TIMEOUT` seconds
idle between requests.  Garbage gets a ``400`` and a close.  None of this can
end the listener, let alone the echo server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import h11
import trio

from ._logs import LogLimiter
from ._version import __version__

if TYPE_CHECKING:
    from ._faults_api import FaultsEndpoint

__all__ = ["HealthEndpoints", "serve_http"]

LOGGER = logging.getLogger("trio_echo")

# Monitoring needs a few connections (Prometheus, a kubelet, a curl); more than
# this at once is a misbehaving client, refused so that it cannot hold the rest.
MAX_CLIENTS: Final = 32
# A scrape request's head is a few hundred bytes; 8 KiB is nginx's default
# large_client_header_buffers size (h11's own default is 16 KiB).
MAX_HEAD: Final = 8192
# Only PUT /faults takes a body (a JSON object of a few hundred bytes); a
# small one elsewhere is read and ignored, a large one refused.
MAX_BODY: Final = 8192
# A whole request must arrive within this; a slowloris holds a slot no longer.
REQUEST_TIMEOUT: Final = 5.0
# Keep-alive between requests (Prometheus reuses its connection between scrapes).
KEEPALIVE_TIMEOUT: Final = 30.0
# Bytes read per receive.
RECEIVE_SIZE: Final = 4096

SERVER_HEADER: Final = f"trio-echo/{__version__}".encode()


class HealthEndpoints:
    """What the three paths answer: a metrics renderer and a readiness test.

    *metrics* takes the request's ``Accept`` header and returns the body and
    its content type; *ready* says whether the server is listening and not
    shutting down.  Both are called synchronously per request.
    """

    def __init__(
        self,
        *,
        metrics: Callable[[str | None], tuple[bytes, str]] | None,
        ready: Callable[[], bool],
        faults: FaultsEndpoint | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        #: ``/faults`` (issue 17), ``None``: not served (404).
        self.faults = faults

    def answer(self, method: bytes, target: bytes, accept: str | None) -> tuple[int, bytes, str]:
        """The status, body and content type for one request."""
        path = target.split(b"?", 1)[0]
        text = "text/plain; charset=utf-8"
        if path == b"/healthz":
            return 200, b"ok\n", text
        if path == b"/readyz":
            if self.ready():
                return 200, b"ready\n", text
            return 503, b"not ready\n", text
        if path == b"/metrics" and self.metrics is not None:
            body, content_type = self.metrics(accept)
            return 200, body, content_type
        return 404, b"not found\n", text


class _Client:
    """One HTTP connection: requests in, answers out, until a limit or the client ends it."""

    def __init__(self, stream: trio.SocketStream, endpoints: HealthEndpoints) -> None:
        self.stream = stream
        self.endpoints = endpoints
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def run(self) -> None:
        try:
            limit = REQUEST_TIMEOUT
            while True:
                # The first request must arrive whole, and its answer be taken,
                # within REQUEST_TIMEOUT; a later one may take KEEPALIVE_TIMEOUT
                # to start, then REQUEST_TIMEOUT from its first byte.  So a client
                # that never reads its answers holds a slot no longer either.
                answered = False
                with trio.move_on_after(limit) as scope:
                    request, body = await self._next_request(scope)
                    if request is not None:
                        await self._respond(request, body)
                        answered = True
                if not answered:
                    return
                if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                    return
                self.conn.start_next_cycle()
                limit = KEEPALIVE_TIMEOUT
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc.error_status_hint, str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _next_request(self, scope: trio.CancelScope) -> tuple[h11.Request | None, bytes]:
        """The next request and its body; ``None`` at the client's EOF, or when
        *scope* runs out (then nothing is answered)."""
        request: h11.Request | None = None
        body = bytearray()
        started = False
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not started and data:
                    started = True
                    scope.deadline = min(scope.deadline, trio.current_time() + REQUEST_TIMEOUT)
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", 413)
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            else:  # ConnectionClosed: a server sees no other event
                return None, b""

    async def _respond(self, request: h11.Request, body: bytes) -> None:
        method = request.method
        path, _, query = request.target.partition(b"?")
        faults = self.endpoints.faults
        if path == b"/faults" and faults is not None:
            if method in (b"GET", b"HEAD", b"PUT", b"DELETE"):
                status, answer, content_type = faults.answer(method, query, body)
                extra = []
            else:
                status, answer, content_type = 405, b"method not allowed\n", "text/plain"
                extra = [(b"allow", b"GET, HEAD, PUT, DELETE")]
            await self._send(status, answer, content_type, extra, head_only=method == b"HEAD")
            return
        if method not in (b"GET", b"HEAD"):
            status, body, content_type = 405, b"method not allowed\n", "text/plain"
            extra = [(b"allow", b"GET, HEAD")]
        else:
            accept = _header(request, b"accept")
            status, body, content_type = self.endpoints.answer(method, request.target, accept)
            extra = []
        await self._send(status, body, content_type, extra, head_only=method == b"HEAD")

    async def _refuse(self, status: int, problem: str) -> None:
        LOGGER.debug("metrics listener: bad request: %s", problem)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"{HTTPStatus(status).phrase}\n".encode()
            with (
                trio.move_on_after(REQUEST_TIMEOUT),
                contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError
                ),
            ):
                await self._send(status, body, "text/plain", [], head_only=False)

    async def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: list[tuple[bytes, bytes]],
        *,
        head_only: bool,
    ) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"server", SERVER_HEADER),
            *extra,
        ]
        if status >= 400:
            headers.append((b"connection", b"close"))
        response = h11.Response(
            status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode()
        )
        out = self.conn.send(response) or b""
        if not head_only:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _Server:
    def __init__(self, endpoints: HealthEndpoints) -> None:
        self.endpoints = endpoints
        self.clients = 0
        # "Too many clients" is logged at most once per WARNING_INTERVAL.
        self.warnings = LogLimiter()

    async def handle(self, stream: trio.SocketStream) -> None:
        if self.clients >= MAX_CLIENTS:
            if self.warnings.allow("too_many_clients", trio.current_time()):
                LOGGER.warning(
                    "metrics listener: %d clients already; closing new ones", MAX_CLIENTS
                )
            await trio.aclose_forcefully(stream)
            return
        self.clients += 1
        try:
            await _Client(stream, self.endpoints).run()
        finally:
            self.clients -= 1


async def serve_http(
    endpoints: HealthEndpoints,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *endpoints* on *listeners* (which it owns from then on) until cancelled.

    ``task_status.started`` gets the listeners once they accept.

    Error handling:
      A client's errors end only that client; ``accept()`` running out of
      descriptors is retried by :func:`trio.serve_listeners`.

    Cancellation:
      Cancelling closes the listeners and every client at once.
    """
    server = _Server(endpoints)
    await trio.serve_listeners(server.handle, listeners, task_status=task_status)
