"""``GET``/``PUT``/``DELETE /faults`` (``_faults_api``): the JSON mapping, the
endpoint in-process under ``autojump_clock`` (a change in the middle of a
connection), and ``curl`` against the real ``trio-echo --metrics``."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trio_echo import EchoServer, Faults
from trio_echo._faults_api import BadFaults, FaultsEndpoint, faults_from_json, faults_to_json
from trio_echo._operations import serve_operations
from trio_echo.pytest_plugin import EchoServerFactory

from .conftest import Connect, StartProcess, receive_exactly
from .test_operations import metrics_port

# ---- the JSON mapping ----


def test_json_round_trip_and_units() -> None:
    faults = faults_from_json(
        b'{"latency": "50ms", "jitter": 0.01, "read_bandwidth": "64KiB/s",'
        b' "limit_data": "1KiB", "target_cidr": ["10.0.0.0/8"], "toxicity": 0.5, "seed": 7}'
    )
    assert faults == Faults(
        latency=0.05,
        jitter=0.01,
        read_bandwidth=65536,
        limit_data=1024,
        target_cidr=("10.0.0.0/8",),
        toxicity=0.5,
        seed=7,
    )
    body = faults_to_json(faults)
    assert body["target_cidr"] == ["10.0.0.0/8"]
    assert body["enabled"] is True
    # What GET answers may be PUT back as it is.
    assert faults_from_json(json.dumps(body).encode()) == faults
    assert faults_to_json(None) == {**faults_to_json(Faults()), "enabled": False}
    assert faults_from_json(b'{"timeout": "never"}') == Faults(timeout=0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "invalid JSON: "),
        (b"[1]", "expected a JSON object of Faults fields, got list"),
        (b'{"latenzy": 1}', "unknown field 'latenzy'; fields: latency, "),
        (b'{"latency": -1}', "latency must be a finite number >= 0"),
        (b'{"latency": "fast"}', "latency: invalid duration 'fast'"),
        (b'{"toxicity": 2}', "toxicity must be between 0 and 1, got 2"),
        (b'{"fragment": true}', "fragment must be"),
        (b'{"target_cidr": ["nowhere"]}', "target_cidr: 'nowhere' is not a network"),
    ],
)
def test_bad_bodies_get_one_line_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(BadFaults) as caught:
        faults_from_json(body)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_endpoint_answers_and_calls_set() -> None:
    calls: list[tuple[Faults | None, bool]] = []
    current: list[Faults | None] = [None]

    def set_faults(faults: Faults | None, *, existing: bool) -> None:
        calls.append((faults, existing))
        current[0] = faults

    endpoint = FaultsEndpoint(lambda: current[0], set_faults)
    status, body, content_type = endpoint.answer(b"PUT", b"", b'{"latency": 1}')
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["latency"] == 1
    assert endpoint.answer(b"DELETE", b"existing=false", b"")[0] == 200
    assert calls == [(Faults(latency=1), True), (None, False)]
    assert endpoint.answer(b"PUT", b"existing=maybe", b"{}")[:2] == (
        400,
        b"existing must be true or false\n",
    )
    assert endpoint.answer(b"PUT", b"", b'{"x": 1}')[0] == 400
    assert len(calls) == 2  # a refused body changes nothing


# ---- over HTTP, in-process ----


async def http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request; the status and body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)
        answer = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                answer += chunk
    head_bytes, _, content = bytes(answer).partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), content


@pytest.fixture
async def control(
    echo_server_factory: EchoServerFactory,
) -> AsyncIterator[tuple[EchoServer, int]]:
    """A server and its operations listener with ``/faults``, in the test's run."""
    server = await echo_server_factory()
    endpoint = FaultsEndpoint(lambda: server.faults, server.set_faults)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_operations(
                "127.0.0.1",
                0,
                source=lambda: None,
                ready=lambda: True,
                start_time=0.0,
                faults=endpoint,
                task_status=task_status,
            )
        )
        yield server, port
        nursery.cancel_scope.cancel()


async def test_put_changes_faults_in_the_middle_of_a_connection(
    autojump_clock: trio.testing.MockClock,
    control: tuple[EchoServer, int],
    connect: Connect,
) -> None:
    server, port = control
    client = await connect(server)

    async def echo_time() -> float:
        start = trio.current_time()
        await client.send_all(b"ping")
        assert await receive_exactly(client, 4, limit=100) == b"ping"
        return trio.current_time() - start

    assert await echo_time() == 0
    status, body = await http(port, "PUT", "/faults", b'{"latency": "3s"}')
    assert status == 200
    assert json.loads(body)["latency"] == 3
    assert await echo_time() == pytest.approx(3)
    status, body = await http(port, "GET", "/faults")
    assert (status, json.loads(body)["enabled"]) == (200, True)
    assert (await http(port, "DELETE", "/faults"))[0] == 200
    assert server.faults is None
    assert await echo_time() == 0
    status, body = await http(port, "PUT", "/faults", b'{"latency": "soon"}')
    assert (status, body) == (
        400,
        b"latency: invalid duration 'soon': expected a number and a unit, like 50ms, 1.5s\n",
    )
    assert (await http(port, "POST", "/faults"))[0] == 405
    assert server.faults is None


async def test_put_with_existing_false_spares_open_connections(
    autojump_clock: trio.testing.MockClock,
    control: tuple[EchoServer, int],
    connect: Connect,
) -> None:
    server, port = control
    old = await connect(server)
    await old.send_all(b"a")
    await receive_exactly(old, 1)
    assert (await http(port, "PUT", "/faults?existing=false", b'{"limit_data": 0}'))[0] == 200
    start = trio.current_time()
    await old.send_all(b"b")
    assert await receive_exactly(old, 1) == b"b"
    assert trio.current_time() == start
    new = await connect(server)
    await new.send_all(b"c")
    assert await new.receive_some() == b""


# ---- curl against the real command ----


@pytest.mark.system
def test_curl_puts_faults_into_a_running_trio_echo(echo_process: StartProcess) -> None:
    server = echo_process("--metrics", "0")
    url = f"http://127.0.0.1:{metrics_port(server)}/faults"

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_code}", *args, url],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"before")
        assert sock.recv(100) == b"before"
        put = curl("-X", "PUT", "--data", '{"limit_data": 2}')
        assert put.stdout.endswith("\n200")
        # The open connection switched: two more bytes, then EOF.
        sock.sendall(b"after")
        received = b""
        while chunk := sock.recv(100):
            received += chunk
        assert received == b"af"
    bad = curl("-X", "PUT", "--data", '{"limit_data": -1}')
    assert bad.stdout == "limit_data must be >= 0, got -1\n\n400"
    assert curl("-X", "DELETE").stdout.endswith("\n200")
    got = curl()
    assert json.loads(got.stdout.rsplit("\n", 1)[0])["enabled"] is False
