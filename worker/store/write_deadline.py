"""A key change that cannot start in time does not happen.

A caller waits ``PQKMS_REQUEST_TIMEOUT_SECONDS`` for an answer (the bridge answers 504
after it). A rotation that waited longer than that for the database's write lock (a
SQLite file held by another process, say) would happen after its caller gave up, and a
retry would rotate twice. So a state-changing request carries a deadline (4/5 of that
timeout after it arrived): past it, its write transaction is not begun and the request
is a 503 that changed nothing. On SQLite the wait for the write lock itself is cut to
what is left (``PRAGMA busy_timeout`` before ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

from schemas.errors import ErrorCode
from worker.errors import ServiceError

__all__ = [
    "DEADLINE_SHARE",
    "WriteDeadlinePassed",
    "end_write_deadline",
    "remaining_seconds",
    "start_write_deadline",
]

# The share of the caller's timeout a key change may spend before it begins: the rest
# is for the change itself, its audit record and the reply's way back.
DEADLINE_SHARE = 0.8

_deadline: ContextVar[float | None] = ContextVar("pqkms_write_deadline", default=None)


class WriteDeadlinePassed(ServiceError):
    """The request waited too long for the database; nothing was changed."""

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The key database was busy for too long; nothing was changed. Retry the request",
        )


def start_write_deadline(timeout_seconds: float, started: float) -> Token[float | None]:
    """Give this request's writes a deadline (``started`` from ``time.perf_counter``)."""
    return _deadline.set(started + timeout_seconds * DEADLINE_SHARE)


def end_write_deadline(token: Token[float | None]) -> None:
    """Back to no deadline (the request is answered)."""
    _deadline.reset(token)


def remaining_seconds() -> float | None:
    """Time left before the current request's deadline; ``None`` without one. Raises
    :class:`WriteDeadlinePassed` once it has passed."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    left = deadline - time.perf_counter()
    if left <= 0:
        raise WriteDeadlinePassed()
    return left
