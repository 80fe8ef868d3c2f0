"""The health ping's probe: one database read for many pings, a slow read is a failure,
and the audit trail's state as the worker's requests see it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from structlog.testing import capture_logs

from worker.readiness import ReadinessProbe


@dataclass
class _Audit:
    failing_now: bool = False
    stalled_seconds: float = 0.0

    def failing(self) -> bool:
        return self.failing_now

    def stalled_for(self) -> float:
        return self.stalled_seconds


class _Database:
    def __init__(self) -> None:
        self.reads = 0
        self.error: Exception | None = None
        self.delay = 0.0

    async def read(self) -> None:
        self.reads += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error


async def test_pings_in_a_burst_share_one_database_read() -> None:
    database = _Database()
    probe = ReadinessProbe(database.read, _Audit(), stalled_after=5.0, fresh_for=60.0)
    states = await asyncio.gather(*(probe.check() for _ in range(20)))
    assert {state.as_reply()["status"] for state in states} == {"ok"}
    assert database.reads == 1


async def test_a_failing_read_is_unavailable_and_a_later_good_one_ok_again() -> None:
    database = _Database()
    database.error = OSError("unable to open database file")
    probe = ReadinessProbe(database.read, _Audit(), stalled_after=5.0, fresh_for=0.0)
    assert (await probe.check()).as_reply() == {
        "status": "degraded", "database": "unavailable", "audit": "ok"}
    database.error = None
    assert (await probe.check()).ok


async def test_a_read_slower_than_its_limit_is_unavailable() -> None:
    database = _Database()
    database.delay = 1.0
    probe = ReadinessProbe(database.read, _Audit(), stalled_after=5.0, read_timeout=0.05)
    with capture_logs() as logs:
        assert (await probe.check()).database == "unavailable"
        assert (await probe.check()).database == "unavailable"
    assert database.reads == 1  # the slow read is waited for again, not started again
    assert [line["event"] for line in logs] == ["database_read_slow"]  # once, not per ping
    database.delay = 0.0
    await asyncio.sleep(1.0)  # the slow read ends (and is not left pending after the test)
    with capture_logs() as logs:
        assert (await probe.check()).database == "ok"
    assert [line["event"] for line in logs] == []  # (its end already said so)


async def test_the_audit_trail_failing_or_stalled_makes_the_worker_degraded() -> None:
    audit = _Audit()
    probe = ReadinessProbe(_Database().read, audit, stalled_after=5.0)
    assert (await probe.check()).ok
    audit.stalled_seconds = 6.0
    assert (await probe.check()).audit == "stalled"
    audit.failing_now = True
    assert (await probe.check()).audit == "failing"
    assert not (await probe.check()).ok


async def test_without_an_audit_trail_the_audit_is_off_and_fine() -> None:
    probe = ReadinessProbe(_Database().read, None, stalled_after=5.0)
    assert (await probe.check()).as_reply() == {"status": "ok", "database": "ok", "audit": "off"}
