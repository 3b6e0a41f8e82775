"""The pytest plugin, used as a user would: pytester runs small user suites.

The user suite is the README's example, taken from README.md, so the example
users copy is the one that is tested.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_echo import ConnectionConfig, ListenerConfig, ServerConfig
from trio_echo._config import _evolve, _field_paths, replace_fields

README = Path(__file__).parent.parent / "README.md"

MARKER_LINES = "# Not needed if your pytest configuration sets `trio_mode = true`.\n"
MARKER = MARKER_LINES + "pytestmark = pytest.mark.trio\n"


def readme_example() -> str:
    """The Python block of the README section "Testing your client with trio-echo"."""
    text = README.read_text()
    section = text.split("## Testing your client with trio-echo", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_readme_example_with_trio_marker(pytester: pytest.Pytester) -> None:
    example = readme_example()
    assert MARKER in example
    assert "trio_echo._" not in example  # no private imports
    pytester.makepyfile(test_my_client=example)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)


def test_readme_example_in_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_my_client=readme_example().replace(MARKER, ""))
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)


def test_fixture_errors_and_cleanup(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_errors="""
        import pytest
        import trio

        from trio_echo.pytest_plugin import EchoServerFactory

        servers = []

        async def test_unknown_field(echo_server_factory: EchoServerFactory) -> None:
            with pytest.raises(TypeError, match="unknown config field 'roundz'"):
                await echo_server_factory(roundz=3)

        async def test_bad_value_names_field(echo_server_factory: EchoServerFactory) -> None:
            with pytest.raises(ValueError, match="rounds"):
                await echo_server_factory(rounds=0)

        async def test_servers_start(echo_server_factory: EchoServerFactory) -> None:
            servers.extend([await echo_server_factory(), await echo_server_factory()])
            assert servers[0].port != servers[1].port

        async def test_servers_were_stopped_and_refuse() -> None:
            for server in servers:
                with trio.fail_after(5):
                    await server.wait_stopped()
                with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
                    await sock.connect(("127.0.0.1", server.port))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=4)


def test_server_failure_fails_the_test_instead_of_hanging(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_crash="""
        import trio

        async def test_waits_forever_on_a_dying_server(echo_server) -> None:
            # Closing the listening socket under the accept loop makes serve() raise.
            echo_server.listeners[0].socket.close()
            await trio.sleep_forever()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ClosedResourceError*"])


# ---- resolving keyword overrides by field name ----


def test_overrides_reach_every_nested_config() -> None:
    base = ServerConfig()
    config = replace_fields(base, rounds=3, framing="line", port=0, grace=1.5)
    assert config.connection == ConnectionConfig(rounds=3, framing="line")
    assert config.listener == ListenerConfig(port=0, grace=1.5)
    assert base == ServerConfig()  # frozen: the original is untouched


def test_whole_nested_config_then_fields_on_top() -> None:
    config = replace_fields(ServerConfig(), connection=ConnectionConfig(max_message=10), rounds=2)
    assert config.connection == ConnectionConfig(max_message=10, rounds=2)


def test_no_overrides_is_identity() -> None:
    assert replace_fields(ServerConfig()) == ServerConfig()


def test_unknown_field_lists_the_known_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown config field 'round'.*rounds"):
        replace_fields(ServerConfig(), round=1)


@attrs.frozen(kw_only=True)
class Inner:
    latency: float = 0.0
    size: int = 1


@attrs.frozen(kw_only=True)
class Middle:
    inner: Inner = attrs.field(factory=Inner)
    size: int = 2


@attrs.frozen(kw_only=True)
class Outer:
    middle: Middle = attrs.field(factory=Middle)
    optional: Inner | None = None


def test_field_paths_walk_any_nesting_depth() -> None:
    paths = _field_paths(Outer)
    assert paths["latency"] == [("middle", "inner", "latency")]
    assert paths["size"] == [("middle", "inner", "size"), ("middle", "size")]
    # An optional nested config is a value to pass whole, not a namespace.
    assert paths["optional"] == [("optional",)]
    assert "inner" in paths


def test_evolve_sets_deep_fields() -> None:
    by_path: dict[tuple[str, ...], Any] = {("middle", "inner", "latency"): 0.5}
    assert _evolve(Outer(), by_path) == Outer(middle=Middle(inner=Inner(latency=0.5)))


def test_deep_override_by_name() -> None:
    assert replace_fields(Outer(), latency=0.5) == Outer(middle=Middle(inner=Inner(latency=0.5)))


def test_ambiguous_name_is_a_type_error() -> None:
    # A later config class may reuse a field name: the override must refuse to guess.
    with pytest.raises(TypeError, match=r"ambiguous config field 'size'.*middle\.size"):
        replace_fields(Outer(), size=3)


def test_without_pytest_trio_other_tests_run_and_fixtures_say_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate an install without the [pytest] extra: pytest-trio's own
    # plugin is off and importing it fails.
    shadow = pytester.mkdir("shadow")
    (shadow / "pytest_trio.py").write_text("raise ImportError('not installed')\n")
    pytester.makepyfile(
        test_user="""
        def test_unrelated() -> None:
            assert 1 + 1 == 2

        def test_wants_a_server(echo_server) -> None:
            raise AssertionError("never reached")
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    result = pytester.runpytest_subprocess("-p", "no:trio", "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*trio-echo's fixtures need pytest-trio*"])
