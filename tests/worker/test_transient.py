"""Which failures are a 503 to retry (a dependency briefly away) and which a 500."""

from __future__ import annotations

import sqlite3

import asyncpg  # type: ignore[import-untyped]
import nats.errors
import pytest
import sqlalchemy.exc

from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.services.transient import (
    DATABASE_UNAVAILABLE_MESSAGE,
    TRANSIENT_MESSAGE,
    is_unavailable,
    unavailable_message,
)


def _operational(text: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(text))


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    asyncpg.exceptions.AdminShutdownError("terminating connection"),
    ConnectionResetError(),
    sqlalchemy.exc.TimeoutError("pool"),
    _operational("database is locked"),
    _operational("disk I/O error"),
    _operational("database or disk is full"),
])
def test_database_outages_are_503(exc: BaseException) -> None:
    assert unavailable_message(exc) == DATABASE_UNAVAILABLE_MESSAGE


def test_nats_outages_keep_their_message() -> None:
    assert unavailable_message(nats.errors.NoRespondersError()) == TRANSIENT_MESSAGE


@pytest.mark.parametrize("exc", [
    ValueError("a bug"),
    _operational("no such table: pqkms_key_version"),
    ServiceError(ErrorCode.INTERNAL, "x"),
])
def test_bugs_stay_500(exc: BaseException) -> None:
    assert unavailable_message(exc) is None


def test_a_503_the_service_raised_is_unavailable_too() -> None:
    assert is_unavailable(ServiceError(ErrorCode.SERVICE_UNAVAILABLE, "later"))
    assert not is_unavailable(ServiceError(ErrorCode.FORBIDDEN, "no"))
