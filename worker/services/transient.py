"""Failures of a dependency that is only briefly away, which a caller should retry:
503, never 500. The message system (a NATS node failing over, a JetStream leader
election) and the key database (a lost connection, a server restarting, a SQLite file
locked or its disk full)."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import nats.errors
import nats.js.errors
import sqlalchemy.exc

from schemas.errors import ErrorCode
from worker.errors import ServiceError

__all__ = [
    "DATABASE_UNAVAILABLE_MESSAGE",
    "TRANSIENT_MESSAGE",
    "is_transient",
    "is_unavailable",
    "unavailable_message",
]

TRANSIENT_MESSAGE = (
    "The message system is briefly unavailable (a node or stream leader is changing); "
    "retry the request"
)
DATABASE_UNAVAILABLE_MESSAGE = "The key database is briefly unavailable; retry the request"

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
)

# Raised by the driver itself (the status read on asyncpg's connection) or by the pool.
_DATABASE_DRIVER_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, timed out (TimeoutError is an OSError)
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InternalClientError,
    sqlalchemy.exc.TimeoutError,  # no connection free in the pool in time
)
# SQLite's OperationalError texts that pass: locked or busy, disk full or failing.
_SQLITE_PASSING = ("locked", "busy", "disk", "full", "i/o", "unable to open")


def _database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _DATABASE_DRIVER_TYPES):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sqlalchemy.exc.InterfaceError):
            return True
        cause = exc.orig.__cause__ if exc.orig is not None else None
        if cause is not None and isinstance(cause, _DATABASE_DRIVER_TYPES):
            return True
        if isinstance(exc, sqlalchemy.exc.OperationalError):
            text = str(exc.orig).lower()
            return any(marker in text for marker in _SQLITE_PASSING)
    return False


def unavailable_message(exc: BaseException) -> str | None:
    """The 503 message when ``exc`` says a dependency could not answer just now."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return TRANSIENT_MESSAGE
    if isinstance(exc, nats.js.errors.APIError) and exc.code == 503:
        return TRANSIENT_MESSAGE
    if _database_unavailable(exc):
        return DATABASE_UNAVAILABLE_MESSAGE
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says NATS, JetStream or the database could not answer just now."""
    return unavailable_message(exc) is not None


def is_unavailable(exc: BaseException) -> bool:
    """A transient failure, or a 503 the service raised itself: nothing to record as an
    item's outcome (a batch fails as a whole, a job chunk is done again later)."""
    if isinstance(exc, ServiceError):
        return exc.code is ErrorCode.SERVICE_UNAVAILABLE
    return is_transient(exc)
