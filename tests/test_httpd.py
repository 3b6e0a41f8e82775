"""The operations listener (``_httpd``): the three paths, and hostile HTTP clients kept apart.

Over real loopback sockets, the listener and an echo server in one trio run,
as ``trio-echo --metrics`` runs them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
import trio

from trio_echo import EchoServer
from trio_echo import _httpd as httpd
from trio_echo._httpd import HealthEndpoints, serve_http
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import receive_exactly, receive_until_eof


class Endpoints:
    def __init__(self) -> None:
        self.ready = True
        self.accepts: list[str | None] = []

    def metrics(self, accept: str | None) -> tuple[bytes, str]:
        self.accepts.append(accept)
        if accept == "big":
            return b"#" * 1_000_000 + b"\n", "text/plain; version=0.0.4"
        return b"trio_echo_rounds_total 3.0\n", "text/plain; version=0.0.4"


@pytest.fixture
async def http() -> AsyncIterator[tuple[Endpoints, int]]:
    state = Endpoints()
    endpoints = HealthEndpoints(metrics=state.metrics, ready=lambda: state.ready)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(functools.partial(serve_http, endpoints, listeners))
        yield state, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def request(port: int, raw: bytes) -> bytes:
    """Send *raw*, read the answer until the listener closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        return await receive_until_eof(stream)


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_healthz_readyz_metrics_and_404(http: tuple[Endpoints, int]) -> None:
    state, port = http
    assert (await request(port, get("/healthz"))).endswith(b"\r\n\r\nok\n")
    assert status_of(await request(port, get("/readyz"))) == 200
    state.ready = False
    answer = await request(port, get("/readyz"))
    assert status_of(answer) == 503
    assert b"HTTP/1.1 503 Service Unavailable\r\n" in answer
    assert status_of(await request(port, get("/healthz"))) == 200
    answer = await request(port, get("/metrics?x=1", "Accept: application/openmetrics-text"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/plain; version=0.0.4\r\n" in answer
    assert answer.endswith(b"trio_echo_rounds_total 3.0\n")
    assert state.accepts == ["application/openmetrics-text"]
    assert status_of(await request(port, get("/nowhere"))) == 404


async def test_head_has_no_body_and_other_methods_are_405(http: tuple[Endpoints, int]) -> None:
    _, port = http
    answer = await request(port, get("/healthz").replace(b"GET", b"HEAD", 1))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 3\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")
    answer = await request(
        port, b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert status_of(answer) == 405
    assert b"allow: GET, HEAD\r\n" in answer


async def test_keep_alive_serves_several_requests_on_one_connection(
    http: tuple[Endpoints, int],
) -> None:
    _, port = http
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        one = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        # Read the first answer whole to learn its length, then expect it twice more.
        await stream.send_all(one)
        first = b""
        while not first.endswith(b"ok\n"):
            first += await stream.receive_some()
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        for _ in range(2):
            await stream.send_all(one)
            assert await receive_exactly(stream, len(first)) == first


async def test_garbage_gets_400_and_a_close(http: tuple[Endpoints, int]) -> None:
    _, port = http
    answer = await request(port, b"\x16\x03\x01garbage that is not http\r\n\r\n")
    assert status_of(answer) == 400
    assert b"connection: close\r\n" in answer


async def test_endless_headers_get_431_within_the_head_limit(http: tuple[Endpoints, int]) -> None:
    _, port = http
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
        sent = 0
        with trio.fail_after(10):
            try:
                while sent <= 4 * httpd.MAX_HEAD:
                    await stream.send_all(b"X-Filler: " + b"y" * 100 + b"\r\n")
                    sent += 112
            except trio.BrokenResourceError:
                pass  # Closed by the listener while we were still sending.
            answer = await receive_until_eof(stream)
    assert status_of(answer) == 431


async def test_a_body_too_large_gets_413(http: tuple[Endpoints, int]) -> None:
    _, port = http
    size = httpd.MAX_BODY + 1
    head = f"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode()
    answer = await request(port, head + b"z" * size)
    assert status_of(answer) == 413


async def test_slowloris_is_cut_off_after_the_request_timeout(
    http: tuple[Endpoints, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = http
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT", 0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        start = trio.current_time()
        with trio.fail_after(5):
            try:
                for byte in b"GET /metrics HTTP/1.1\r\nHost: t\r\n":
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            except trio.BrokenResourceError:
                pass
            answer = await receive_until_eof(stream)
        assert answer == b""  # Nothing answered: the request never arrived.
        assert 0.3 <= trio.current_time() - start < 3


async def test_a_client_that_never_reads_its_answers_is_cut_off(
    http: tuple[Endpoints, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = http
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT", 0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        one = b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: big\r\n\r\n"
        await stream.send_all(one * 20)  # 20 MB of answers that nobody reads
        await trio.sleep(1)
        received = 0
        with trio.fail_after(5):
            try:
                while chunk := await stream.receive_some(1 << 20):
                    received += len(chunk)
            except trio.BrokenResourceError:
                pass  # A reset: the listener closed with requests unread.
        # The listener gave up long before answering everything.
        assert received < 20 * 1_000_000


async def test_hostile_http_clients_do_not_disturb_the_echo_service(
    echo_server_factory: EchoServerFactory,
    http: tuple[Endpoints, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every metrics slot taken by silent clients, more refused (and logged
    once); the echo server in the same run echoes as usual, and /healthz
    answers once they go."""
    _, port = http
    server: EchoServer = await echo_server_factory(rounds=1)
    hostile = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(httpd.MAX_CLIENTS)]
    try:
        with trio.fail_after(5):
            for _ in range(3):
                extra = await trio.open_tcp_stream("127.0.0.1", port)
                async with extra:
                    # Refused at once: closed without an answer.
                    assert await receive_until_eof(extra) == b""
        refusals = [r for r in caplog.records if "clients already" in r.getMessage()]
        assert len(refusals) == 1
        echo = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with echo:
            await echo.send_all(b"still echoing")
            assert await receive_until_eof(echo) == b"still echoing"
    finally:
        for stream in hostile:
            await stream.aclose()
    with trio.fail_after(5):
        while True:
            answer = await request(port, get("/healthz"))
            if answer:
                break
            await trio.sleep(0.01)  # The listener notices the closes asynchronously.
    assert status_of(answer) == 200
