"""The hash-chained audit log on both backends: chains written, verified, tampered with;
and the group-committing sink's failure paths (stream and database)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from schemas.audit import AuditKind
from tests.support.audit_fakes import FakeStream
from worker.audit.entry import GENESIS_HASH, AuditEntry
from worker.audit.trail import AuditTrail, AuditUnavailable
from worker.audit.verify import Severity, VerifyReport, verify_audit_log
from worker.services.request_record import RequestRecord
from worker.store import KeyStore
from worker.store.audit_log import AuditLog

WORKER = "test-host:1"


def _record(n: int, outcome: str = "OK") -> RequestRecord:
    return RequestRecord(
        operation="pqkms.v1.kem.encrypt", request_id=f"req-{n}", tenant_id=str(uuid.uuid4()),
        algorithm="ML-KEM-768", key_version=1, outcome=outcome, duration_seconds=0.001 * n,
    )


def _chain(length: int, *, closed: bool = True) -> list[AuditEntry]:
    """An open record, ``length`` request records and (if ``closed``) a close record."""
    chain_id = str(uuid.uuid4())
    start = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    kinds = [AuditKind.OPEN, *[AuditKind.REQUEST] * length]
    if closed:
        kinds.append(AuditKind.CLOSE)
    entries: list[AuditEntry] = []
    prev = GENESIS_HASH
    for seq, kind in enumerate(kinds, start=1):
        entry = AuditEntry.seal(
            chain_id=chain_id, seq=seq, kind=kind, worker_id=WORKER,
            recorded_at=start + timedelta(milliseconds=seq), prev_hash=prev,
            record=_record(seq) if kind == AuditKind.REQUEST else None,
        )
        entries.append(entry)
        prev = entry.record_hash
    return entries


async def _write(log: AuditLog, entries: Sequence[AuditEntry], batch: int = 3) -> None:
    for start in range(0, len(entries), batch):
        await log.append(entries[start:start + batch])


async def _sql(store: KeyStore, statement: str, **params: object) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(text(statement), params)


def _errors(report: VerifyReport) -> list[tuple[str, int | None, str]]:
    return [(f.chain_id, f.seq, f.problem) for f in report.errors]


async def test_chains_round_trip_and_verify_intact(log: AuditLog) -> None:
    closed, still_open = _chain(7), _chain(4, closed=False)
    await _write(log, closed)
    await _write(log, still_open, batch=2)

    report = await verify_audit_log(log, None)

    assert report.intact, report.lines()
    assert (report.chains, report.records, report.open_chains) == (2, 14, 1)
    async with log.snapshot() as snapshot:
        stored = [entry async for entry in snapshot.entries()]
        heads = {head.chain_id: head for head in await snapshot.chains()}
    assert sorted(stored, key=lambda e: (e.chain_id, e.seq)) == sorted(
        closed + still_open, key=lambda e: (e.chain_id, e.seq))
    assert heads[closed[0].chain_id].last_seq == 9
    assert heads[closed[0].chain_id].last_hash == closed[-1].record_hash
    assert heads[still_open[0].chain_id].closed_at is None
    assert await log.last_record(still_open[0].chain_id) == (5, still_open[-1].record_hash)


async def test_an_edited_field_is_detected(log: AuditLog, store: KeyStore) -> None:
    entries = _chain(5)
    await _write(log, entries)
    await _sql(store, "UPDATE pqkms_audit_record SET outcome = 'OK', tenant_id = 'someone' "
               "WHERE chain_id = :chain AND seq = 3", chain=entries[0].chain_id)

    report = await verify_audit_log(log, None)

    assert not report.intact
    assert _errors(report) == [
        (entries[0].chain_id, 3, "content does not match its record_hash (record edited)")]
    assert f"chain {entries[0].chain_id} seq 3" in "\n".join(report.lines())


async def test_a_deleted_middle_record_is_detected(log: AuditLog, store: KeyStore) -> None:
    entries = _chain(5)
    await _write(log, entries)
    await _sql(store, "DELETE FROM pqkms_audit_record WHERE chain_id = :chain AND seq = 4",
               chain=entries[0].chain_id)

    report = await verify_audit_log(log, None)

    assert _errors(report) == [(entries[0].chain_id, 4, "record 4 missing")]


async def test_a_deleted_tail_of_a_closed_chain_is_detected(
    log: AuditLog, store: KeyStore
) -> None:
    entries = _chain(5)  # seqs 1..7, 7 is the close record
    await _write(log, entries)
    await _sql(store, "DELETE FROM pqkms_audit_record WHERE chain_id = :chain AND seq >= 5",
               chain=entries[0].chain_id)

    report = await verify_audit_log(log, None)

    assert [(seq, problem.split(" (")[0]) for _, seq, problem in _errors(report)] == [
        (5, "records 5..7 missing at the end")]


async def test_a_deleted_chain_row_is_detected(log: AuditLog, store: KeyStore) -> None:
    entries = _chain(2)
    await _write(log, entries)
    await _sql(store, "DELETE FROM pqkms_audit_chain WHERE chain_id = :chain",
               chain=entries[0].chain_id)

    report = await verify_audit_log(log, None)

    assert [problem for _, _, problem in _errors(report)] == [
        "no pqkms_audit_chain row for this chain (deleted)"]


async def test_recomputed_hashes_pass_the_database_check_but_not_the_stream(
    log: AuditLog, store: KeyStore
) -> None:
    entries = _chain(4)
    await _write(log, entries)
    stream_copy = [entry.to_message() for entry in entries]
    # A forger edits record 3 and recomputes every later hash, chain row included.
    forged: list[AuditEntry] = entries[:2]
    for entry in entries[2:]:
        fields = {**entry.hashed_fields(), "recorded_at": entry.recorded_at}
        if entry.seq == 3:
            fields["outcome"] = "ERR_AUTH_001"
        redone = AuditEntry(**fields, prev_hash=forged[-1].record_hash, record_hash="")
        forged.append(AuditEntry(**{**fields, "prev_hash": redone.prev_hash,
                                    "record_hash": redone.computed_hash()}))
    for entry in forged[2:]:
        await _sql(store, "UPDATE pqkms_audit_record SET outcome = :outcome, prev_hash = :prev, "
                   "record_hash = :hash WHERE chain_id = :chain AND seq = :seq",
                   outcome=entry.outcome, prev=entry.prev_hash, hash=entry.record_hash,
                   chain=entry.chain_id, seq=entry.seq)
    await _sql(store, "UPDATE pqkms_audit_chain SET last_hash = :hash WHERE chain_id = :chain",
               hash=forged[-1].record_hash, chain=entries[0].chain_id)

    assert (await verify_audit_log(log, None)).intact
    report = await verify_audit_log(log, stream_copy)

    assert [seq for _, seq, _ in _errors(report)] == [3, 4, 5, 6]
    assert all("differs from its copy in the stream" in p for _, _, p in _errors(report))


async def test_an_open_chain_tail_is_checked_against_the_stream(
    log: AuditLog, store: KeyStore
) -> None:
    entries = _chain(4, closed=False)
    await _write(log, entries)
    stream_copy = [entry.to_message() for entry in entries]
    other = _chain(1)  # a chain only the stream knows: its rows were all deleted
    stream_copy += [entry.to_message() for entry in other]
    await _sql(store, "DELETE FROM pqkms_audit_record WHERE chain_id = :chain AND seq >= 4",
               chain=entries[0].chain_id)

    without_stream = await verify_audit_log(log, None)
    with_stream = await verify_audit_log(log, stream_copy)

    assert without_stream.intact  # an open chain may legitimately end anywhere
    assert any(f.severity is Severity.NOTE and "open" in f.problem
               for f in without_stream.findings)
    assert sorted(_errors(with_stream)) == sorted([
        (entries[0].chain_id, 4, "records 4..5 in the stream but missing from the database"),
        (other[0].chain_id, 1,
         "records 1..3 in the stream but missing from the database (whole chain)"),
    ])


# -- the sink ---------------------------------------------------------------------------


@pytest.fixture
async def trail(log: AuditLog, stream: FakeStream) -> AsyncIterator[AuditTrail]:
    sink = AuditTrail(log, stream, WORKER)  # type: ignore[arg-type]
    sink.start()
    try:
        yield sink
    finally:
        await sink.close()


async def test_concurrent_appends_share_flushes_in_one_chain(
    trail: AuditTrail, log: AuditLog, stream: FakeStream
) -> None:
    await asyncio.gather(*(trail.append(_record(n)) for n in range(50)))
    await trail.append(_record(99), kind=AuditKind.JOB_CHUNK)
    await trail.close()

    report = await verify_audit_log(log, list(stream.published.values()))
    assert report.intact, report.lines()
    assert (report.chains, report.records, report.open_chains) == (1, 53, 0)
    async with log.snapshot() as snapshot:
        kinds = [entry.kind async for entry in snapshot.entries()]
    assert kinds[0] == "open" and kinds[-1] == "close" and kinds[-2] == "job_chunk"
    with pytest.raises(AuditUnavailable):
        await trail.append(_record(100))


async def test_a_stream_failure_fails_the_request_and_is_republished(
    trail: AuditTrail, log: AuditLog, stream: FakeStream
) -> None:
    await trail.append(_record(1))
    assert not trail.failing()
    stream.fail = True
    with pytest.raises(AuditUnavailable):
        await trail.append(_record(2))  # committed, not acked
    assert trail.failing()  # changes are refused before they act (worker/handlers)
    with pytest.raises(AuditUnavailable):
        await trail.append(_record(3))  # the backlog still does not publish: not written
    assert trail.failing()
    stream.fail = False
    await trail.append(_record(4))
    assert not trail.failing()
    await trail.close()
    assert trail.failing()  # stopped

    report = await verify_audit_log(log, list(stream.published.values()))
    assert report.intact, report.lines()
    async with log.snapshot() as snapshot:
        ids = [entry.request_id async for entry in snapshot.entries()]
    assert ids == [None, "req-1", "req-2", "req-4", None]
    assert len(stream.published) == 5  # record 3 (req-2) reached the stream on retry


async def test_after_a_failure_the_trail_recovers_without_a_request(
    log: AuditLog, stream: FakeStream
) -> None:
    sink = AuditTrail(log, stream, WORKER, recover_seconds=0.01)  # type: ignore[arg-type]
    sink.start()
    try:
        await sink.append(_record(1))
        stream.fail = True
        with pytest.raises(AuditUnavailable):
            await sink.append(_record(2))  # committed, not acked
        await asyncio.sleep(0.1)  # a few attempts, all refused
        assert sink.failing()
        stream.fail = False
        for _ in range(200):  # the back-off has grown to 0.08 s at most by now
            if not sink.failing():
                break
            await asyncio.sleep(0.01)
        assert not sink.failing()
        # The committed record reached the stream with nobody appending.
        published = [json.loads(body)["request_id"] for body in stream.published.values()]
        assert published == [None, "req-1", "req-2"]
    finally:
        await sink.close()


async def test_a_database_failure_fails_the_request_and_reuses_the_seq(
    trail: AuditTrail, log: AuditLog, stream: FakeStream, store: KeyStore
) -> None:
    await trail.append(_record(1))
    await _sql(store, "ALTER TABLE pqkms_audit_record RENAME TO pqkms_audit_record_away")
    try:
        with pytest.raises(AuditUnavailable):
            await trail.append(_record(2))
        assert trail.failing()
    finally:
        await _sql(store, "ALTER TABLE pqkms_audit_record_away RENAME TO pqkms_audit_record")
    await trail.append(_record(3))
    assert not trail.failing()
    await trail.close()

    report = await verify_audit_log(log, list(stream.published.values()))
    assert report.intact, report.lines()
    async with log.snapshot() as snapshot:
        pairs = [(entry.seq, entry.request_id) async for entry in snapshot.entries()]
    assert pairs == [(1, None), (2, "req-1"), (3, "req-3"), (4, None)]


class CommitThenFail(AuditLog):
    """A log whose next append commits and then reports a lost connection (an unsure
    ``COMMIT``)."""

    lose_reply = False

    async def append(self, entries: Sequence[AuditEntry]) -> None:
        await super().append(entries)
        if self.lose_reply:
            self.lose_reply = False
            raise ConnectionError("connection lost during COMMIT")


async def test_a_commit_whose_outcome_was_lost_is_adopted(
    store: KeyStore, stream: FakeStream
) -> None:
    log = CommitThenFail(store.engine)
    sink = AuditTrail(log, stream, WORKER)  # type: ignore[arg-type]
    sink.start()
    try:
        await sink.append(_record(1))
        log.lose_reply = True
        with pytest.raises(AuditUnavailable):
            await sink.append(_record(2))  # stored, but the sink could not know
        await sink.append(_record(3))
    finally:
        await sink.close()

    report = await verify_audit_log(log, list(stream.published.values()))
    assert report.intact, report.lines()
    async with log.snapshot() as snapshot:
        pairs = [(entry.seq, entry.request_id) async for entry in snapshot.entries()]
    assert pairs == [(1, None), (2, "req-1"), (3, "req-2"), (4, "req-3"), (5, None)]
    assert len(stream.published) == 5  # req-2's record was published once adopted


async def test_a_chain_changed_under_the_sink_makes_it_start_a_new_chain(
    trail: AuditTrail, log: AuditLog, stream: FakeStream, store: KeyStore
) -> None:
    await trail.append(_record(1))
    await trail.append(_record(2))
    first_chain = trail.chain_id
    await _sql(store, "ALTER TABLE pqkms_audit_record RENAME TO pqkms_audit_record_away")
    try:
        with pytest.raises(AuditUnavailable):
            await trail.append(_record(3))
    finally:
        await _sql(store, "ALTER TABLE pqkms_audit_record_away RENAME TO pqkms_audit_record")
    # Meanwhile someone removes the chain's last record: the sink cannot continue it.
    await _sql(store, "DELETE FROM pqkms_audit_record WHERE chain_id = :chain AND seq = 3",
               chain=first_chain)
    await trail.append(_record(4))

    assert trail.chain_id != first_chain
    async with log.snapshot() as snapshot:
        new_chain = [(e.seq, e.kind, e.request_id) async for e in snapshot.entries()
                     if e.chain_id == trail.chain_id]
    assert new_chain == [(1, "open", None), (2, "request", "req-4")]
    report = await verify_audit_log(log, list(stream.published.values()))
    assert [(f.chain_id, f.seq) for f in report.errors] == [(first_chain, 3)]


def test_the_record_hash_is_reproducible_with_the_standard_library() -> None:
    import hashlib
    import json

    entry = _chain(1)[1]
    fields = {**entry.hashed_fields(), "request_id": "é€ \u2028 \"quoted\""}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(bytes.fromhex(entry.prev_hash) + canonical.encode()).hexdigest()
    assert AuditEntry(**{**fields, "recorded_at": entry.recorded_at,
                         "prev_hash": entry.prev_hash, "record_hash": ""}
                      ).computed_hash() == expected
    assert fields["recorded_at"] == "2025-01-02T03:04:05.680901Z"


# -- lingering for upcoming records -------------------------------------------------------

_NEVER = 3600.0  # a linger this long only ends early, which is what these tests show
_GUARD = 30.0  # a broken linger fails the test instead of hanging it


@pytest.fixture
def upcoming() -> list[int]:
    """Requests still running whose records are due (the crypto pool's count)."""
    return [0]


@pytest.fixture
async def lingering(log: AuditLog, stream: FakeStream,
                    upcoming: list[int]) -> AsyncIterator[AuditTrail]:
    sink = AuditTrail(log, stream, WORKER, linger_seconds=_NEVER,  # type: ignore[arg-type]
                      upcoming=lambda: upcoming[0])
    sink.start()
    try:
        yield sink
    finally:
        await asyncio.wait_for(sink.close(), _GUARD)


async def test_records_due_soon_share_one_flush(
    lingering: AuditTrail, stream: FakeStream, upcoming: list[int]
) -> None:
    await asyncio.wait_for(lingering.append(_record(0)), _GUARD)  # (after the open record)
    upcoming[0] = 3

    async def one_finishes(n: int) -> None:
        upcoming[0] -= 1  # its signature is done; its record follows
        await lingering.append(_record(n))

    appends = []
    for n in range(1, 4):
        appends.append(asyncio.create_task(one_finishes(n)))
        await asyncio.sleep(0.01)  # each arrives while the others still run
    await asyncio.wait_for(asyncio.gather(*appends), _GUARD)

    assert stream.flushes[-1] == ["request", "request", "request"]


async def test_nothing_upcoming_means_no_wait(
    lingering: AuditTrail, stream: FakeStream
) -> None:
    for n in range(3):
        await asyncio.wait_for(lingering.append(_record(n)), _GUARD)

    assert stream.flushes[-3:] == [["request"]] * 3


async def test_a_linger_ends_at_its_deadline(log: AuditLog, stream: FakeStream) -> None:
    sink = AuditTrail(log, stream, WORKER, linger_seconds=0.05,  # type: ignore[arg-type]
                      upcoming=lambda: 1)  # never comes
    sink.start()
    try:
        await asyncio.wait_for(sink.append(_record(1)), _GUARD)
    finally:
        await asyncio.wait_for(sink.close(), _GUARD)

    assert ["request"] in [[kind for kind in flush if kind != "open"] for flush in stream.flushes]


async def test_closing_ends_a_linger_and_writes_what_waits(
    log: AuditLog, stream: FakeStream, upcoming: list[int]
) -> None:
    sink = AuditTrail(log, stream, WORKER, linger_seconds=_NEVER,  # type: ignore[arg-type]
                      upcoming=lambda: upcoming[0])
    sink.start()
    await asyncio.wait_for(sink.append(_record(0)), _GUARD)
    upcoming[0] = 5  # five more are running and never finish
    pending = asyncio.create_task(sink.append(_record(1)))
    await asyncio.sleep(0.01)

    await asyncio.wait_for(sink.close(), _GUARD)

    await asyncio.wait_for(pending, _GUARD)  # written, not failed
    report = await verify_audit_log(log, list(stream.published.values()))
    assert report.intact and report.records == 4  # open, two requests, close

