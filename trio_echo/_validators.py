"""Field validators for the frozen config classes: one-line errors naming the field and the rule.

attrs' own validators raise a tuple with the whole ``Attribute`` in it, which
prints over several lines; each of these raises one :exc:`TypeError` or
:exc:`ValueError` whose message starts with the field's name.
"""

from __future__ import annotations

import math
import os
from typing import Any

import attrs

__all__ = [
    "PATH",
    "PATH_TYPES",
    "instance_of",
    "int_in_range",
    "networks",
    "one_of",
    "optional",
    "percent",
    "probability",
    "seconds",
    "short",
]


def int_in_range(lo: int, hi: int | None = None) -> Any:
    """Validator: a real ``int`` (not ``bool``) with ``lo <= value <= hi``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{attribute.name} must be an int, not {type(value).__name__}: {short(value)}"
            )
        if value < lo or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"{attribute.name} must be {bounds}, got {value!r}")

    return check


def seconds(*, allow_zero: bool) -> Any:
    """Validator: a finite, non-negative number of seconds (``> 0`` unless *allow_zero*)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"{attribute.name} must be a number of seconds, "
                f"not {type(value).__name__}: {short(value)}"
            )
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            # Where None is allowed, it (not 0) is what turns the setting off.
            off = " (None disables it)" if is_optional(attribute) else ""
            raise ValueError(
                f"{attribute.name} must be a finite number {bound}{off}, got {value!r}"
            )

    return check


def is_optional(attribute: attrs.Attribute[Any]) -> bool:
    """Whether the field's annotation admits ``None``."""
    return "None" in str(attribute.type)


def optional(validator: Any) -> Any:
    return attrs.validators.optional(validator)


def instance_of(*types: type, what: str) -> Any:
    """Validator: an instance of *types*, described to the user as *what*.

    attrs' own ``instance_of`` raises a tuple with the whole ``Attribute`` in
    it, which prints over several lines; this raises one line naming the field.
    """

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, types):
            raise TypeError(
                f"{attribute.name} must be {what}, not {type(value).__name__}: {short(value)}"
            )

    return check


def one_of(choices: tuple[object, ...]) -> Any:
    """Validator: one of *choices* (a one-line error naming the field and the choices)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            allowed = ", ".join(repr(choice) for choice in choices)
            raise ValueError(f"{attribute.name} must be one of {allowed}, got {short(value)}")

    return check


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to *limit* characters, so that an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# What a file name may be, for the TLS files.
PATH_TYPES: tuple[type, ...] = (str, os.PathLike)
PATH = "a path (str or os.PathLike)"


def percent(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a number from 0 to 100."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{attribute.name} must be a percentage, not {type(value).__name__}: {short(value)}"
        )
    if not 0 <= value <= 100:
        raise ValueError(f"{attribute.name} must be a percentage from 0 to 100, got {value!r}")


def probability(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a probability, not {type(value).__name__}")
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def networks(*, none_means: str) -> Any:
    """Validator: a non-empty tuple of CIDR strings; *none_means* says what ``None`` does."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        import ipaddress

        if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
            raise TypeError(
                f"{attribute.name} must be a tuple of CIDR strings, got {short(value)}"
            )
        if not value:
            raise ValueError(f"{attribute.name} must name at least one network ({none_means})")
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{attribute.name}: {item!r} is not a network like 10.0.0.0/8 or fd00::/8"
                ) from None

    return check
