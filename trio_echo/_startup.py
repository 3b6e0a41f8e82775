"""Start-up failures: what keeps the server from starting, said in one line to the operator."""

from __future__ import annotations

__all__ = ["StartupError", "describe"]


class StartupError(Exception):
    """The server cannot start; the message says why, for the operator."""


def describe(exc: OSError) -> str:
    """An OSError's own words (``Address already in use``), without the errno prefix."""
    return exc.strerror or str(exc)
