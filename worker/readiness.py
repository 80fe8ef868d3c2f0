"""What a worker's health ping reports: whether it can serve requests, not only answer.

A worker whose event loop runs answers a ping; that says nothing of its database (a
locked or unreadable file, a schema a bad restore left without its tables) or of its
audit trail (every request waits for its record's commit and JetStream ack). Health
checks that only saw the ping said "ok" while every request timed out or failed, so
the ping carries both: ``database`` from a cheap read (``worker.store.probe``), at most
one a second however often pings come, and ``audit`` from the trail's own state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

__all__ = ["AuditState", "AuditStateName", "DatabaseState", "Readiness", "ReadinessProbe"]

_log = structlog.get_logger("pqkms.worker")

DatabaseState = Literal["ok", "unavailable"]
AuditStateName = Literal["ok", "failing", "stalled", "off"]


class AuditState(Protocol):
    """The part of ``worker.audit.trail.AuditTrail`` a probe reads."""

    def failing(self) -> bool:
        """The last flush failed, or the trail has stopped."""
        ...

    def stalled_for(self) -> float:
        """Seconds the running flush has taken so far."""
        ...


@dataclass(frozen=True, slots=True)
class Readiness:
    """One answer of the probe."""

    database: DatabaseState
    audit: AuditStateName

    @property
    def ok(self) -> bool:
        """Requests can be served: the database reads and the audit trail writes."""
        return self.database == "ok" and self.audit in ("ok", "off")

    def as_reply(self) -> dict[str, str]:
        """The ping's fields: ``status`` is ``ok`` or ``degraded``."""
        return {"status": "ok" if self.ok else "degraded",
                "database": self.database, "audit": self.audit}


class ReadinessProbe:
    """Answers "can this worker serve?" from a database read and the audit trail."""

    def __init__(
        self,
        read_database: Callable[[], Awaitable[None]],
        audit: AuditState | None,
        *,
        stalled_after: float,
        read_timeout: float = 0.5,
        fresh_for: float = 1.0,
    ) -> None:
        self._read_database = read_database
        self._audit = audit
        self._stalled_after = stalled_after
        self._read_timeout = read_timeout
        self._fresh_for = fresh_for
        self._database: DatabaseState = "ok"
        self._read_at = -fresh_for  # monotonic time of the last read's end
        self._reading: asyncio.Task[DatabaseState] | None = None
        self._slow_reported = False

    async def check(self) -> Readiness:
        """The worker's state now (the database's as read within ``fresh_for``)."""
        return Readiness(await self._database_state(), self._audit_state())

    def _audit_state(self) -> AuditStateName:
        if self._audit is None:
            return "off"
        if self._audit.failing():
            return "failing"
        if self._audit.stalled_for() > self._stalled_after:
            return "stalled"
        return "ok"

    async def _database_state(self) -> DatabaseState:
        if time.monotonic() - self._read_at < self._fresh_for:
            return self._database
        if self._reading is None or self._reading.done():
            # One read for every ping that comes meanwhile; a slow one is not cut short
            # (``shield``): the next ping waits for the same read instead of piling more.
            self._reading = asyncio.get_running_loop().create_task(self._read())
        try:
            return await asyncio.wait_for(asyncio.shield(self._reading), self._read_timeout)
        except TimeoutError:
            if not self._slow_reported:  # once per slow spell (a hung read logs nothing)
                self._slow_reported = True
                _log.warning("database_read_slow", timeout_seconds=self._read_timeout)
            return "unavailable"

    async def _read(self) -> DatabaseState:
        try:
            await self._read_database()
        except Exception as exc:
            state: DatabaseState = "unavailable"
            if self._database == "ok":
                _log.warning("database_unavailable", reason=type(exc).__name__)
        else:
            state = "ok"
            if self._database != "ok" or self._slow_reported:
                _log.info("database_available")
            self._slow_reported = False
        self._database = state
        self._read_at = time.monotonic()
        return state
