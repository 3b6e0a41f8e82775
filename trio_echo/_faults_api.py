"""``GET``/``PUT``/``DELETE /faults`` on the operations listener: faults as JSON, sans-IO.

A test-only control (anyone who can reach the ``--metrics`` listener can
change the faults): the JSON object's keys are :class:`~trio_echo.Faults`'
fields.  ``GET`` answers the faults new connections get (every field; all
off when none); ``PUT`` replaces them with the body's (fields left out keep
their defaults, so ``{}`` turns every fault off); ``DELETE`` turns them off.
``PUT`` and ``DELETE`` also switch the open connections (as
``EchoServer.set_faults(..., existing=True)``), unless the query says
``?existing=false``.  Durations are numbers of seconds or strings with a unit
(``"50ms"``; ``timeout`` also ``"never"``), sizes numbers of bytes or strings
(``"64KiB"``), as on the command line.  A bad body gets ``400`` with one line
naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Final

import attrs

from ._config import Faults
from ._units import parse_duration, parse_rate, parse_size

__all__ = ["FaultsEndpoint", "faults_from_json", "faults_to_json"]

JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"

# Fields that take a string with a unit too, and how to read it.
_UNITS: Final[dict[str, Callable[[str], float | int]]] = {
    "latency": parse_duration,
    "jitter": parse_duration,
    "fragment_delay": parse_duration,
    "slow_close": parse_duration,
    "timeout": parse_duration,
    "fragment": parse_size,
    "stall_after": parse_size,
    "reset_after": parse_size,
    "limit_data": parse_size,
    "bandwidth": parse_rate,
    "read_bandwidth": parse_rate,
}


class BadFaults(ValueError):
    """A ``PUT /faults`` body that is not valid faults; the message is one line."""


def faults_to_json(faults: Faults | None) -> dict[str, Any]:
    """Every field of *faults* (``None``: the defaults, all off), plus ``enabled``."""
    body = attrs.asdict(faults if faults is not None else Faults())
    if body["target_cidr"] is not None:
        body["target_cidr"] = list(body["target_cidr"])
    body["enabled"] = faults is not None and faults.enabled
    return body


def faults_from_json(body: bytes) -> Faults:
    """The :class:`Faults` a JSON object describes.

    Raises:
      BadFaults: not JSON, not an object, an unknown field, or a value the
        field refuses (the message names the field).
    """
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadFaults(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadFaults(f"expected a JSON object of Faults fields, got {type(data).__name__}")
    data.pop("enabled", None)  # what GET answers may be PUT back as it is
    fields = attrs.fields_dict(Faults)
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            raise BadFaults(f"unknown field {name!r}; fields: {', '.join(fields)}")
        values[name] = _value(name, value)
    try:
        return Faults(**values)
    except (TypeError, ValueError) as exc:
        raise BadFaults(str(exc)) from None


def _value(name: str, value: object) -> object:
    if name == "timeout" and value == "never":
        return 0.0  # as --timeout never
    if isinstance(value, str) and name in _UNITS:
        try:
            return _UNITS[name](value)
        except ValueError as exc:
            raise BadFaults(f"{name}: {exc}") from None
    if name == "target_cidr" and isinstance(value, list):
        return tuple(value)
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - not JSON
        raise BadFaults(f"{name} must be finite")
    return value


class FaultsEndpoint:
    """Answers ``/faults`` requests from the server's *get* and *set*
    (``set(faults_or_None, existing=...)``); both are called synchronously."""

    def __init__(
        self,
        get: Callable[[], Faults | None],
        set_faults: Callable[..., None],
    ) -> None:
        self._get = get
        self._set = set_faults

    def answer(self, method: bytes, query: bytes, body: bytes) -> tuple[int, bytes, str]:
        """The status, body and content type for one request."""
        existing = _existing(query)
        if existing is None:
            return 400, b"existing must be true or false\n", TEXT
        if method == b"PUT":
            try:
                faults = faults_from_json(body)
            except BadFaults as exc:
                return 400, f"{exc}\n".encode(), TEXT
            self._set(faults, existing=existing)
        elif method == b"DELETE":
            self._set(None, existing=existing)
        return 200, (json.dumps(faults_to_json(self._get())) + "\n").encode(), JSON


def _existing(query: bytes) -> bool | None:
    """``existing=`` in the query string: ``True`` unless it says false."""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"existing":
            if value.lower() in (b"", b"1", b"true", b"yes"):
                return True
            if value.lower() in (b"0", b"false", b"no"):
                return False
            return None
    return True
