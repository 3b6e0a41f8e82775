"""The public API: exactly the documented names, each documented; the typed example runs."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import trio_echo
from trio_echo import ConnectionConfig, EchoServer
from trio_echo.pytest_plugin import EchoServerFactory

from . import typing_example

README = Path(__file__).parent.parent / "README.md"

PUBLIC = {
    "ConnectionConfig",
    "EchoProtocol",
    "EchoServer",
    "Faults",
    "Framing",
    "ListenerConfig",
    "ServerConfig",
    "ServerStatistics",
    "TLSConfig",
    "UDPConfig",
    "UDPStatistics",
    "ThreadedEchoServer",
    "__version__",
    "serve",
    "serve_in_thread",
    # The measuring client (trio-echo bench).
    "BenchConfig",
    "BenchResult",
    "DatagramCounts",
    "LatencySummary",
    "ServerUnreachable",
    "bench",
    "parse_address",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(trio_echo.__all__) == PUBLIC
    assert len(trio_echo.__all__) == len(PUBLIC)
    # The names are imported on first use: resolve every one, then look.
    for name in PUBLIC:
        assert getattr(trio_echo, name) is not None, name
    assert set(dir(trio_echo)) >= PUBLIC
    # Only identifiers are names: pytest's assertion rewriting adds "@py_builtins"
    # and "@pytest_ar" to modules it rewrites, and an installed (not editable)
    # trio_echo is one, as the package of the pytest11 plugin.  Submodules (the
    # pytest plugin, once imported) are not re-exported names either.
    exported = {name for name in vars(trio_echo) if name.isidentifier() and name[0] != "_"}
    assert exported - PUBLIC <= {"pytest_plugin"}


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Connection'"):
        trio_echo.Connection  # noqa: B018


def test_every_public_name_and_method_has_a_docstring() -> None:
    for name in PUBLIC - {"__version__"}:
        obj = getattr(trio_echo, name)
        assert (obj.__doc__ or "").strip(), name
        if inspect.isclass(obj):
            for member_name, member in vars(obj).items():
                if not member_name.startswith("_") and (
                    callable(member) or isinstance(member, property)
                ):
                    assert member.__doc__, f"{name}.{member_name}"


def test_serve_and_shutdown_document_errors_and_cancellation() -> None:
    for doc in (trio_echo.serve.__doc__, EchoServer.shutdown.__doc__):
        assert doc is not None
        assert "Cancellation:" in doc
    assert "Raises:" in (ConnectionConfig.__doc__ or "")


async def test_typing_example_embeds_and_shuts_down() -> None:
    stats = await typing_example.embed()
    assert (stats.accepted, stats.rounds, stats.closed_by_reason) == (1, 1, {"rounds": 1})


async def test_typing_example_against_the_fixtures(
    echo_server: EchoServer, echo_server_factory: EchoServerFactory
) -> None:
    await typing_example.check_client(echo_server)
    assert await typing_example.check_factory(echo_server_factory) == 0
    assert typing_example.framing_of(ConnectionConfig(framing="line")) == "line"


def test_typing_example_in_a_thread() -> None:
    stats = typing_example.in_a_thread()
    assert (stats.accepted, stats.rounds) == (1, 1)


def test_typing_example_against_the_threaded_factory(
    pytester: pytest.Pytester,
) -> None:
    # A sync test gets the threaded factory; the typed body runs against it.
    pytester.syspathinsert(Path(__file__).parent)
    pytester.makepyfile(
        test_typed="""
        import typing_example

        def test_it(echo_server_factory):
            assert typing_example.check_threaded_factory(echo_server_factory) == "127.0.0.1"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "-W", "error").assert_outcomes(passed=1)


@pytest.mark.system
def test_readme_embedding_example_runs_as_shown() -> None:
    text = README.read_text()
    section = text.split("## Embedding it in a trio program", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    result = subprocess.run(
        [sys.executable, "-c", match.group(1)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "b'hello\\n'"
    assert lines[1].startswith("ServerStatistics(active=")
