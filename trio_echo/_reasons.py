"""Every close reason, once: the strings in the close log line and ``closed_by_reason``.

Plain string constants rather than an enum, so that the values compare, hash
and format exactly as the strings the log and the statistics have always
carried.  The README's close-reason table lists them with what the client sees.
"""

from __future__ import annotations

from typing import Final

# Decided by the protocol (sans-IO).
ROUNDS: Final = "rounds"
EOF: Final = "eof"
LINE_TOO_LONG: Final = "line-too-long"

# Decided by the connection loop.
SHUTDOWN: Final = "shutdown"
IDLE: Final = "idle"
RESET: Final = "reset"
CANCELLED: Final = "cancelled"
ERROR: Final = "error"

# Decided by a step before the echo loop.
PROXY_ERROR: Final = "proxy-error"
TLS_ERROR: Final = "tls-error"

# Decided on admission, before anything is read (issue 16).
PROXY_UNTRUSTED: Final = "proxy-untrusted"
PER_IP_LIMIT: Final = "per-ip-limit"
PER_IP_RATE: Final = "per-ip-rate"

# Decided by an injected fault.
STALLED: Final = "stalled"
RESET_INJECTED: Final = "reset-injected"
TIMEOUT_INJECTED: Final = "timeout-injected"
LIMIT_DATA: Final = "limit-data"

#: Every close reason, in the order of the README table.
ALL: Final = (
    ROUNDS,
    EOF,
    LINE_TOO_LONG,
    IDLE,
    SHUTDOWN,
    RESET,
    CANCELLED,
    ERROR,
    PROXY_ERROR,
    TLS_ERROR,
    PROXY_UNTRUSTED,
    PER_IP_LIMIT,
    PER_IP_RATE,
    STALLED,
    RESET_INJECTED,
    TIMEOUT_INJECTED,
    LIMIT_DATA,
)

#: Reasons of clients refused on admission: a flood of them must not flood the
#: log, so they get no close line each, only a warning at most every 10 s.
REFUSED: Final = frozenset({PROXY_UNTRUSTED, PER_IP_LIMIT, PER_IP_RATE})
