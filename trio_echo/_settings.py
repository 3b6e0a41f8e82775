"""Settings from ``TRIO_ECHO_*`` variables under the command line's, and the settings in effect.

Every long option ``--some-option`` can also be set by the environment
variable ``TRIO_ECHO_SOME_OPTION``; the command line wins.  Flags take
``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``; ``--fd``
takes a comma-separated list.  Variables are turned into arguments placed
*before* the command line's, so argparse applies one set of rules to both and
the command line's later value wins.  A value argparse would refuse is a
usage error naming the variable.  Other ``TRIO_ECHO_*`` variables are not
errors: :func:`arguments_from_environment` returns a warning for each.

Like :mod:`trio_echo._cli`, this module imports neither trio nor the server.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

__all__ = [
    "ENV_PREFIX",
    "arguments_from_environment",
    "configuration_in_effect",
    "document_environment",
    "env_name",
]

ENV_PREFIX: Final = "TRIO_ECHO_"
TRUE: Final = frozenset({"1", "true", "yes", "on"})
FALSE: Final = frozenset({"0", "false", "no", "off", ""})
# Options no variable sets: they answer and exit.
NOT_FROM_ENVIRONMENT: Final = frozenset({"--help", "--version"})


def env_name(option: str) -> str:
    """``--max-connections`` -> ``TRIO_ECHO_MAX_CONNECTIONS``."""
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


def _settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option a variable can set, by its long option string (hidden ones included:
    a worker's command line is built from them, never from the user's variables)."""
    found = {}
    for action in parser._actions:  # argparse has no public list of its actions
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and longs[0] not in NOT_FROM_ENVIRONMENT and action.help != argparse.SUPPRESS:
            found[longs[0]] = action
    return found


def document_environment(parser: argparse.ArgumentParser) -> None:
    """Add ``[env: TRIO_ECHO_...]`` to the help of every option a variable can set."""
    for option, action in _settable(parser).items():
        action.help = f"{action.help or ''} [env: {env_name(option)}]".lstrip()


def arguments_from_environment(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], argv: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The arguments the ``TRIO_ECHO_*`` variables in *environ* stand for, and a
    warning for each such variable that no option has.

    Exits with a usage error (status 2, one line naming the variable) for a
    value the option would refuse.
    """
    if any(arg in ("-h", "--help", "--version") for arg in argv):
        return [], []  # They answer whatever the environment says.
    settable = _settable(parser)
    by_name = {env_name(option): option for option in settable}
    arguments: list[str] = []
    warnings: list[str] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        option = by_name.get(name)
        if option is None:
            guess = "--" + name[len(ENV_PREFIX) :].lower().replace("_", "-")
            warnings.append(f"ignoring the environment variable {name}: no option {guess}")
            continue
        value = environ[name]
        action = settable[option]
        try:
            arguments += _as_arguments(option, action, value, argv)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            parser.error(f"environment variable {name} (for {option}): {exc}")
    return arguments, warnings


def _as_arguments(
    option: str, action: argparse.Action, value: str, argv: Sequence[str]
) -> list[str]:
    if action.nargs == 0:  # a flag
        word = value.strip().lower()
        if word in TRUE:
            return [option]
        if word in FALSE:
            return []
        raise ValueError(f"expected true or false (1/0, yes/no, on/off), got {value!r}")
    values = [value]
    if isinstance(action, argparse._AppendAction):
        # The command line wins: a repeatable option given there ignores the variable.
        if any(arg == option or arg.startswith(option + "=") for arg in argv):
            return []
        values = [part.strip() for part in value.split(",") if part.strip()]
    for one in values:
        _check(action, one)
    return [f"{option}={one}" for one in values]


def _check(action: argparse.Action, value: str) -> None:
    """Refuse *value* as argparse would, but with the variable's name in the message."""
    converted: Any = value
    if action.type is int:
        if not value.strip().lstrip("+-").isdigit():
            raise ValueError(f"expected an integer, got {value!r}")
        converted = int(value)
    elif callable(action.type):
        converted = action.type(value)
    if action.choices is not None and converted not in action.choices:
        allowed = ", ".join(map(str, action.choices))
        raise ValueError(f"invalid choice {value!r} (choose from {allowed})")


def configuration_in_effect(config: object, process: Mapping[str, object]) -> dict[str, object]:
    """Every config field by its bare name (nested configs flattened), then *process*.

    Paths are given as paths; the files' contents are never read here (no key
    material in a log).  Values are JSON-able.
    """
    flat: dict[str, object] = {}

    def walk(obj: Any) -> None:
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            if attrs.has(type(value)):
                walk(value)
            else:
                flat[field.name] = _plain(value)

    walk(config)
    flat.update({name: _plain(value) for name, value in process.items()})
    return flat


def _plain(value: object) -> object:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
