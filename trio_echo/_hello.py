"""``--hello``: a greeting sent once when a connection opens, before any echo (server identity).

The text may name the answering server with placeholders, resolved once per
server (and per listening port), never per message: ``{hostname}``, ``{pid}``,
``{worker}`` (the ``--workers`` worker's number, ``0`` outside workers) and
``{port}`` (the local port the client connected to).  It is sent as UTF-8,
after the PROXY header and the TLS handshake, before the echo loop and under
any injected fault; it is not an echo, so it counts in neither ``bytes_out``
nor ``rounds``.
"""

from __future__ import annotations

import os
import socket
import string
from typing import Final

from ._reasons import IDLE
from ._transports import Ended, Owner, Transport

__all__ = ["PLACEHOLDERS", "HelloStep", "check_hello", "render_hello"]

PLACEHOLDERS: Final = ("hostname", "pid", "worker", "port")


def check_hello(text: str) -> None:
    """Raise :exc:`ValueError` (message starting ``hello``) unless *text* formats
    with exactly the known placeholders (``{{`` and ``}}`` are literal braces)."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as exc:
        raise ValueError(
            f"hello is not a valid template ({exc}); write {{{{ for a brace"
        ) from None
    known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    for field in fields:
        if field not in PLACEHOLDERS:
            raise ValueError(f"hello has an unknown placeholder {{{field}}}; known: {known}")
    try:
        render_hello(text, port=0, worker=0)
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"hello is not a valid template: {exc}") from None


def render_hello(text: str, *, port: int, worker: int) -> bytes:
    """*text* with its placeholders filled for this process, as UTF-8."""
    values = {"hostname": socket.gethostname(), "pid": os.getpid(), "worker": worker, "port": port}
    return text.format(**values).encode()


class HelloStep:
    """The step before echoing that sends *greeting*; bounded by *timeout* (the
    idle timeout: a client that reads nothing ends as ``idle``)."""

    def __init__(self, transport: Transport, greeting: bytes, timeout: float) -> None:
        self.transport = transport
        self.greeting = greeting
        self.timeout = timeout

    async def run(self, owner: Owner) -> None:
        transport = self.transport
        greeting = self.greeting
        sent = transport.send_now(greeting)
        if sent != len(greeting):
            await transport.send_all(memoryview(greeting)[sent:])
        owner.progress()

    def timed_out(self, owner: Owner) -> Ended:
        return Ended(IDLE)
