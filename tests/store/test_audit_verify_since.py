"""``pqkms audit verify`` after a restore, an upgrade or a rolling upgrade: the hints
name every known cause, and ``since`` judges only what came after an accepted gap."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from schemas.algorithms import Algorithm
from schemas.audit import AuditKind
from schemas.subjects import Subject
from worker.audit.entry import GENESIS_HASH, AuditEntry
from worker.audit.verify import (
    InvalidSince,
    VerifyReport,
    parse_since,
    verify_audit_log,
    verify_from_settings,
)
from worker.config import Settings
from worker.services.request_record import RequestRecord
from worker.store import KeyStore, NewKeyMaterial, TenantRecord
from worker.store.audit_log import AuditLog

WORKER = "test-host:1"
BEFORE = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)  # the backup, the old workers
RESTORED = datetime(2025, 1, 3, tzinfo=UTC)  # the database back in service
AFTER = datetime(2025, 1, 3, 1, 0, tzinfo=UTC)
Material = Callable[[], NewKeyMaterial]


def _chain(start: datetime, records: Sequence[RequestRecord | None],
           *, closed: bool = True) -> list[AuditEntry]:
    """An open record, one request record per item (``None``: a plain encrypt) and, if
    ``closed``, a close record, a millisecond apart from ``start`` on."""
    chain_id = str(uuid.uuid4())
    items: list[tuple[AuditKind, RequestRecord | None]] = [(AuditKind.OPEN, None)]
    for n, record in enumerate(records):
        items.append((AuditKind.REQUEST, record or RequestRecord(
            operation=Subject.KEM_ENCRYPT.value, request_id=f"req-{n}",
            tenant_id=str(uuid.uuid4()), algorithm="Kyber768", key_version=1, outcome="OK",
            duration_seconds=0.001)))
    if closed:
        items.append((AuditKind.CLOSE, None))
    entries: list[AuditEntry] = []
    prev = GENESIS_HASH
    for seq, (kind, record) in enumerate(items, start=1):
        entry = AuditEntry.seal(chain_id=chain_id, seq=seq, kind=kind, worker_id=WORKER,
                                recorded_at=start + timedelta(milliseconds=seq),
                                prev_hash=prev, record=record)
        entries.append(entry)
        prev = entry.record_hash
    return entries


def _messages(*chains: list[AuditEntry]) -> list[bytes]:
    return [entry.to_message() for chain in chains for entry in chain]


def _errors(report: VerifyReport) -> list[tuple[str, int | None, str]]:
    return [(f.chain_id, f.seq, f.problem) for f in report.errors]


async def _sql(store: KeyStore, statement: str, **params: object) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(text(statement), params)


async def test_a_restore_names_its_cause_and_since_judges_what_came_after(
    log: AuditLog, store: KeyStore,
) -> None:
    # Chain `old` was open when the backup was taken: records 4..5 reached the stream
    # and the database after that, and the restore took them out of the database.
    old = _chain(BEFORE, [None] * 4, closed=False)
    await log.append(old[:3])
    new = _chain(AFTER, [None] * 2)  # a worker started on the restored database
    await log.append(new)
    stream = _messages(old, new)

    report = await verify_audit_log(log, stream)

    assert _errors(report) == [
        (old[0].chain_id, 4, "records 4..5 in the stream but missing from the database")]
    hints = "\n".join(report.lines())
    assert "hint: records in the stream but missing from the database were deleted from " \
        "it, or the database was restored from a backup" in hints
    assert "pqkms audit verify --since TIME" in hints

    accepted = await verify_audit_log(log, stream, since=RESTORED)

    assert accepted.intact, accepted.lines()
    assert (accepted.chains, accepted.records) == (1, 4)
    assert (accepted.skipped_chains, accepted.skipped_records) == (1, 3)
    lines = accepted.lines()
    assert lines[-2] == ("skipped (before --since 2025-01-03T00:00:00.000000Z): 1 chain(s) "
                         "whose last record is older (3 record(s) in the database), "
                         "0 key version(s) created before it")
    assert lines[-1].startswith("audit log intact: 1 chain(s), 4 record(s), 0 open;")
    assert lines[-1].endswith("; judged from 2025-01-03T00:00:00.000000Z on")
    assert not any(line.startswith("hint:") for line in lines)

    # What comes after is judged as before: an edit of the new chain is found.
    await _sql(store, "UPDATE pqkms_audit_record SET outcome = 'ERR_AUTH_001' "
               "WHERE chain_id = :chain AND seq = 2", chain=new[0].chain_id)
    edited = await verify_audit_log(log, stream, since=RESTORED)
    assert (new[0].chain_id, 2, "content does not match its record_hash (record edited)") \
        in _errors(edited)


async def test_times_edited_in_the_database_do_not_move_a_chain_out_of_view(
    log: AuditLog, store: KeyStore,
) -> None:
    new = _chain(AFTER, [None] * 2)
    await log.append(new)
    # A forger edits a record and backdates every time of the chain before --since.
    await _sql(store, "UPDATE pqkms_audit_record SET outcome = 'ERR_AUTH_001' "
               "WHERE chain_id = :chain AND seq = 2", chain=new[0].chain_id)
    await _sql(store, "UPDATE pqkms_audit_record SET recorded_at = :old WHERE chain_id = :chain",
               old=BEFORE.replace(tzinfo=None) if store.engine.dialect.name == "sqlite"
               else BEFORE, chain=new[0].chain_id)
    await _sql(store, "UPDATE pqkms_audit_chain SET opened_at = :old, closed_at = :old "
               "WHERE chain_id = :chain",
               old=BEFORE.replace(tzinfo=None) if store.engine.dialect.name == "sqlite"
               else BEFORE, chain=new[0].chain_id)

    for stream in (_messages(new), None):  # with the stream's copies, and without them
        report = await verify_audit_log(log, stream, since=RESTORED)

        assert report.skipped_chains == 0
        assert (new[0].chain_id, 2) in [(chain, seq) for chain, seq, _ in _errors(report)]


async def test_a_chain_missing_from_the_database_is_judged_by_its_stream_times(
    log: AuditLog,
) -> None:
    lost_before = _chain(BEFORE, [None])  # written after the backup, before the restore
    deleted_after = _chain(AFTER, [None])  # deleted after the restore: tampering
    report = await verify_audit_log(log, _messages(lost_before, deleted_after),
                                    since=RESTORED)

    assert _errors(report) == [(deleted_after[0].chain_id, 1,
                                "records 1..3 in the stream but missing from the database "
                                "(whole chain)")]
    assert report.skipped_chains == 1


async def _versions(store: KeyStore, tenant: TenantRecord, material: Material,
                    count: int) -> None:
    for _ in range(count):
        if await store.get_active_key(tenant.tenant_id, Algorithm.KYBER768) is None:
            await store.generate_first(tenant.tenant_id, Algorithm.KYBER768, material(), None)
        else:
            await store.rotate(tenant.tenant_id, Algorithm.KYBER768, material(), None)


async def test_versions_without_creation_records_get_every_cause_and_since_accepts_them(
    log: AuditLog, store: KeyStore, tenant: TenantRecord, new_material: Material,
) -> None:
    # The audit began before these versions, but no record tells of their creation:
    # old workers made them (a rolling upgrade, or scheduled rotations before they were
    # audited).
    started = datetime.now(UTC) - timedelta(seconds=1)
    await log.append(_chain(started, [None], closed=False))
    await _versions(store, tenant, new_material, 3)
    later = datetime.now(UTC) + timedelta(minutes=5)  # past the grace for commits in flight

    report = await verify_audit_log(log, None, now=later)

    keys = [f.line() for f in report.errors if f.scope == "key"]
    assert len(keys) == 3, keys
    assert all(("has no audit record of its creation (a worker stopped before its record, "
                "a worker older than creation records, or a restored database? see the "
                "hint)") in line for line in keys)
    hint = next(line for line in report.lines() if "has no audit record" in line
                and line.startswith("hint:"))
    for cause in ("a worker stopped between the change and its record",
                  "a worker older than the audit of key creations made it",
                  "the database was restored from a backup"):
        assert cause in hint

    # The operator has looked at them; from the end of the upgrade on, all is judged.
    upgraded = datetime.now(UTC)
    accepted = await verify_audit_log(log, None, now=later, since=upgraded)
    assert accepted.intact, accepted.lines()
    assert accepted.skipped_key_versions == 3
    assert accepted.skipped_chains == 1  # its last record is older than --since

    # A version made after that without its record is still an error.
    await _versions(store, tenant, new_material, 1)
    again = await verify_audit_log(log, None, now=later, since=upgraded)
    assert [f.problem.split(" (created")[0] for f in again.errors] == ["version 4"]


def test_since_is_an_iso_time_in_utc() -> None:
    assert parse_since("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_since("2026-01-02T05:04:05+02:00") == datetime(2026, 1, 2, 3, 4, 5,
                                                                tzinfo=UTC)
    assert parse_since("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_since("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    with pytest.raises(InvalidSince, match="not an ISO 8601 time: 'yesterday'"):
        parse_since("yesterday")


async def test_a_future_since_is_refused_before_anything_is_read() -> None:
    settings = Settings(database_url="sqlite+aiosqlite:////nonexistent/never.db")
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with pytest.raises(InvalidSince, match="is in the future"):
        await verify_from_settings(settings, use_stream=False, since=future)
