"""What the audit trail reports per group commit: sizes and times of the flushes that
were written, and the stage of those that failed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from tests.support.audit_fakes import FakeStream, RecordedFlushes
from worker.audit.trail import AuditTrail, AuditUnavailable
from worker.services.request_record import RequestRecord
from worker.store import KeyStore
from worker.store.audit_log import AuditLog

WORKER = "test-host:2"


def _record(n: int) -> RequestRecord:
    return RequestRecord(
        operation="pqkms.v1.kem.encrypt", request_id=f"req-{n}", tenant_id=str(uuid.uuid4()),
        algorithm="ML-KEM-768", key_version=1, outcome="OK", duration_seconds=0.001,
    )


@pytest.fixture
def flushes() -> RecordedFlushes:
    return RecordedFlushes()


@pytest.fixture
async def trail(log: AuditLog, stream: FakeStream,
                flushes: RecordedFlushes) -> AsyncIterator[AuditTrail]:
    sink = AuditTrail(log, stream, WORKER, metrics=flushes)  # type: ignore[arg-type]
    sink.start()
    try:
        yield sink
    finally:
        await sink.close()


async def test_every_written_flush_is_reported_with_its_size_and_times(
    trail: AuditTrail, flushes: RecordedFlushes
) -> None:
    await trail.append(_record(1))
    await asyncio.gather(*(trail.append(_record(n)) for n in range(2, 12)))
    await trail.close()

    sizes = [records for records, _, _ in flushes.flushed]
    # The open record, the requests (however they were grouped), the close record.
    assert sum(sizes) == 1 + 11 + 1
    assert len(sizes) < 13  # the ten concurrent appends shared flushes
    assert all(commit >= 0 and publish >= 0 for _, commit, publish in flushes.flushed)
    assert flushes.failed == []


async def test_a_stream_that_does_not_ack_is_reported_as_such(
    trail: AuditTrail, stream: FakeStream, flushes: RecordedFlushes
) -> None:
    await trail.append(_record(1))
    reported = len(flushes.flushed)
    stream.fail = True
    with pytest.raises(AuditUnavailable):
        await trail.append(_record(2))  # committed, not acked
    with pytest.raises(AuditUnavailable):
        await trail.append(_record(3))  # the backlog still does not publish
    assert flushes.failed == ["stream", "stream"]
    assert len(flushes.flushed) == reported


async def test_a_database_that_refuses_the_records_is_reported_as_such(
    trail: AuditTrail, store: KeyStore, flushes: RecordedFlushes
) -> None:
    await trail.append(_record(1))
    async with store.engine.begin() as connection:
        await connection.execute(
            text("ALTER TABLE pqkms_audit_record RENAME TO pqkms_audit_record_away"))
    try:
        with pytest.raises(AuditUnavailable):
            await trail.append(_record(2))
    finally:
        async with store.engine.begin() as connection:
            await connection.execute(
                text("ALTER TABLE pqkms_audit_record_away RENAME TO pqkms_audit_record"))
    assert flushes.failed == ["database"]


class BrokenMetrics(RecordedFlushes):
    def audit_flushed(self, records: int, commit_seconds: float,
                      publish_seconds: float) -> None:
        raise RuntimeError("metrics backend broken")


async def test_a_failing_metric_never_fails_a_written_flush(
    log: AuditLog, stream: FakeStream
) -> None:
    sink = AuditTrail(log, stream, WORKER, metrics=BrokenMetrics())  # type: ignore[arg-type]
    sink.start()
    try:
        await sink.append(_record(1))  # committed and acked: answered, metric or not
        await sink.append(_record(2))
    finally:
        await sink.close()
    assert len(stream.published) == 4  # open, two requests, close
