"""Config overrides by bare field name: ``replace_fields(config, rounds=3, port=0)``."""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

__all__ = ["replace_fields"]


_Config = TypeVar("_Config")


def replace_fields(config: _Config, **overrides: Any) -> _Config:
    """A copy of *config* (any attrs config) with fields replaced by their bare names.

    ``replace_fields(config, rounds=3, port=0)`` sets ``connection.rounds`` and
    ``listener.port``.  Names are found by walking the nested config classes
    (every field whose type is an attrs class), so a field added to any of them
    is accepted with no change here.  A nested config may also be replaced
    whole by its own name (``connection=ConnectionConfig(...)``); bare names
    inside it then apply on top.

    Raises:
      TypeError: for a name that no config class has, or that more than one has.
      ValueError, TypeError: from the validators, naming the field.
    """
    config_class: type = type(config)
    paths = _field_paths(config_class)
    by_path: dict[tuple[str, ...], Any] = {}
    for name, value in overrides.items():
        found = paths.get(name, [])
        if not found:
            known = ", ".join(sorted(paths))
            raise TypeError(f"unknown config field {name!r}; known fields: {known}")
        if len(found) > 1:
            where = " and ".join(".".join(path) for path in found)
            raise TypeError(
                f"ambiguous config field {name!r}: it is {where}; "
                "pass the enclosing config object instead"
            )
        by_path[found[0]] = value
    evolved: _Config = _evolve(config, by_path)
    return evolved


# Cached: resolving type hints costs milliseconds, and a test suite may start a
# server per test (callers only read the result).
@functools.cache
def _field_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, list[tuple[str, ...]]]:
    """Every field name reachable from *cls*, with each path that leads to it."""
    paths: dict[str, list[tuple[str, ...]]] = {}
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        path = (*prefix, field.name)
        paths.setdefault(field.name, []).append(path)
        field_type = hints[field.name]
        if isinstance(field_type, type) and attrs.has(field_type):
            for name, more in _field_paths(field_type, path).items():
                paths.setdefault(name, []).extend(more)
    return paths


def _evolve(instance: Any, by_path: Mapping[tuple[str, ...], Any]) -> Any:
    changes: dict[str, Any] = {}
    for field in attrs.fields(type(instance)):
        name = field.name
        value = by_path.get((name,), getattr(instance, name))
        inner = {path[1:]: v for path, v in by_path.items() if len(path) > 1 and path[0] == name}
        if inner:
            value = _evolve(value, inner)
        if (name,) in by_path or inner:
            changes[name] = value
    return attrs.evolve(instance, **changes)
