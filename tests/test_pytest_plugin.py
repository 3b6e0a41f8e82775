"""The pytest plugin, used as a user would: pytester runs small user suites.

The user suites are the README's files, one per style, taken from README.md, so
the examples users copy are the ones that are tested.  (CI also runs each one in
an environment of its own, on pytest 8 and 9: .ci/readme_suites.py.)
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_echo import ConnectionConfig, ListenerConfig, ServerConfig
from trio_echo._overrides import _evolve, _field_paths, replace_fields
from trio_echo.pytest_plugin import MISSING_PYTEST_TRIO, PORT_VARIABLE

README = Path(__file__).parent.parent / "README.md"

MARKER_LINES = "# Not needed if your pytest configuration sets `trio_mode = true`.\n"
MARKER = MARKER_LINES + "pytestmark = pytest.mark.trio\n"

SUITE = re.compile(r"<!-- readme-suite: (\w+) -->\n```python\n(.*?)```", re.DOTALL)


def readme_suites() -> dict[str, str]:
    """The README's complete user files, by style (the marker comment before each)."""
    return dict(SUITE.findall(README.read_text()))


def run_suite(pytester: pytest.Pytester, style: str, *args: str) -> pytest.RunResult:
    code = readme_suites()[style]
    pytester.makepyfile(**{f"test_{style}": code})
    return pytester.runpytest("-p", "no:cacheprovider", "-W", "error", "--strict-markers", *args)


def test_readme_has_one_public_file_per_style() -> None:
    suites = readme_suites()
    assert set(suites) == {"sync", "unittest", "asyncio", "anyio", "trio", "thread"}
    for code in suites.values():
        assert "trio_echo._" not in code  # no private imports
        assert "pip install" in code.splitlines()[0]


def test_readme_sync_file(pytester: pytest.Pytester) -> None:
    run_suite(pytester, "sync").assert_outcomes(passed=4)


def test_readme_unittest_file(pytester: pytest.Pytester) -> None:
    run_suite(pytester, "unittest").assert_outcomes(passed=2)


def test_readme_anyio_file_on_both_backends(pytester: pytest.Pytester) -> None:
    run_suite(pytester, "anyio").assert_outcomes(passed=4)


def test_readme_trio_file_with_trio_marker(pytester: pytest.Pytester) -> None:
    assert MARKER in readme_suites()["trio"]
    run_suite(pytester, "trio").assert_outcomes(passed=2)


def test_readme_trio_file_in_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_my_client=readme_suites()["trio"].replace(MARKER, ""))
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)


def test_readme_serve_in_thread_script(capsys: pytest.CaptureFixture[str]) -> None:
    code = compile(readme_suites()["thread"], "check_echo.py", "exec")
    exec(code, {"__name__": "__main__"})
    assert capsys.readouterr().out.startswith("ok: ServerStatistics(")


def test_sync_and_trio_tests_in_one_trio_mode_suite(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_mixed="""
        import trio

        from trio_echo import EchoServer, ThreadedEchoServer

        def test_sync(echo_server, echo_server_factory) -> None:
            assert isinstance(echo_server, ThreadedEchoServer)
            assert isinstance(echo_server_factory(rounds=1), ThreadedEchoServer)

        async def test_trio(echo_server, echo_server_factory) -> None:
            assert isinstance(echo_server, EchoServer)
            assert isinstance(await echo_server_factory(rounds=1), EchoServer)

        async def test_trio_faults_follow_the_mock_clock(echo_server_factory, autojump_clock):
            server = await echo_server_factory(latency=30)
            stream = await trio.open_tcp_stream(server.host, server.port)
            start = trio.current_time()
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
            assert trio.current_time() - start >= 30
            await stream.aclose()
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3)


def test_threaded_factory_errors_and_cleanup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_errors="""
        import socket

        import pytest

        servers = []

        def test_unknown_field(echo_server_factory) -> None:
            with pytest.raises(TypeError, match="unknown config field 'roundz'"):
                echo_server_factory(roundz=3)

        def test_bad_value_names_field(echo_server_factory) -> None:
            with pytest.raises(ValueError, match="rounds"):
                echo_server_factory(rounds=0)

        def test_servers_start(echo_server_factory) -> None:
            servers.extend([echo_server_factory(), echo_server_factory()])
            assert servers[0].port != servers[1].port

        def test_servers_were_stopped_and_refuse() -> None:
            for server in servers:
                assert "stopped" in repr(server)
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((server.host, server.port), timeout=5)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=4)


def test_a_threaded_server_failure_is_a_teardown_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_crash="""
        def test_crashes_its_server(echo_server) -> None:
            # Closing the listening socket under the accept loop makes serve() fail.
            echo_server._call_in_server(echo_server._server.listeners[0].socket.close)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_crashes_its_server*"])
    result.stdout.fnmatch_lines(["*ClosedResourceError*"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_environment_pins_the_address(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv(PORT_VARIABLE, str(port))
    monkeypatch.setenv("TRIO_ECHO_TEST_HOST", "127.0.0.1")
    pytester.makepyfile(
        test_pinned=f"""
        import pytest

        def test_sync(echo_server) -> None:
            assert (echo_server.host, echo_server.port) == ("127.0.0.1", {port})

        @pytest.mark.trio
        async def test_trio(echo_server) -> None:
            assert (echo_server.host, echo_server.port) == ("127.0.0.1", {port})

        def test_keywords_win(echo_server_factory) -> None:
            assert echo_server_factory(port=0).port != {port}
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3)


def test_a_bad_pinned_port_is_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PORT_VARIABLE, "http")
    pytester.makepyfile(test_pinned="def test_sync(echo_server) -> None:\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["trio-echo: TRIO_ECHO_TEST_PORT='http' is not a port: *"])
    assert "Traceback" not in result.stdout.str()


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


def test_without_pytest_trio_only_trio_tests_fail_in_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate an install without pytest-trio: its plugin is off and importing it fails.
    shadow = pytester.mkdir("shadow")
    (shadow / "pytest_trio.py").write_text("raise ImportError('not installed')\n")
    pytester.makepyfile(
        test_user="""
        import pytest

        def test_unrelated() -> None:
            assert 1 + 1 == 2

        def test_sync_server(echo_server) -> None:
            assert echo_server.port > 0

        @pytest.mark.trio
        async def test_trio_server(echo_server) -> None:
            raise AssertionError("never reached")
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    result = pytester.runpytest_subprocess(
        "-p", "no:trio", "-p", "no:cacheprovider", "--strict-markers", timeout=60
    )
    result.assert_outcomes(passed=2, errors=1)
    assert MISSING_PYTEST_TRIO in result.stdout.lines  # the whole line, nothing more
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_without_pytest_trio_a_trio_mode_suite_gets_the_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = pytester.mkdir("shadow")
    (shadow / "pytest_trio.py").write_text("raise ImportError('not installed')\n")
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_user="""
        def test_sync_server(echo_server) -> None:
            assert echo_server.port > 0

        async def test_trio_server(echo_server) -> None:
            raise AssertionError("never reached")
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    result = pytester.runpytest_subprocess(
        "-p", "no:trio", "-p", "no:cacheprovider", "--strict-config", timeout=60
    )
    result.assert_outcomes(passed=1, errors=1)
    assert MISSING_PYTEST_TRIO in result.stdout.lines
