"""``pqkms audit archive`` and ``verify-archive`` on each backend: a past period leaves the
database for a file, what remains still verifies (with and without the stream), and
the files verify alone and against the database's anchors."""

from __future__ import annotations

import errno
import gzip
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas.algorithms import Algorithm
from schemas.audit import AUDIT_ARCHIVE_ANCHOR_OPERATION, AUDIT_ARCHIVE_OPERATION, AuditKind
from schemas.subjects import Subject
from tests.support.audit_fakes import FakeStream
from worker.audit import archive as archive_module
from worker.audit import archive_file
from worker.audit.archive import ArchiveOutcome, ArchiveRefused, archive_audit_log
from worker.audit.archive_check import verify_archive_files
from worker.audit.archive_file import ArchiveFileError, read_archive
from worker.audit.archive_record import ArchiveNotAttested
from worker.audit.entry import GENESIS_HASH, AuditEntry, canonical_time
from worker.audit.verify import VerifyReport, verify_audit_log
from worker.services.request_record import RequestRecord
from worker.store import KeyStore, NewKeyMaterial, TenantRecord, audit_archive_rows
from worker.store.audit_log import AuditLog

WORKER = "test-host:1"
# Where verify looks for archive runs when the stream holds none.
NO_RUN_IN_STREAM = "in the stream, or in the database before what the stream holds"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
CUT = T0 + timedelta(days=30)


def _record(n: int, **fields: object) -> RequestRecord:
    values: dict[str, object] = {
        "operation": Subject.KEM_ENCRYPT.value, "request_id": f"req-{n}",
        "tenant_id": str(uuid.uuid4()), "algorithm": "Kyber768", "key_version": 1,
        "outcome": "OK", "duration_seconds": 0.001}
    values.update(fields)
    return RequestRecord(**values)  # type: ignore[arg-type]


class Chain:
    """A chain built record by record, one day apart by default."""

    def __init__(self) -> None:
        self.chain_id = str(uuid.uuid4())
        self.entries: list[AuditEntry] = []

    def add(self, kind: AuditKind, at: datetime,
            record: RequestRecord | None = None) -> AuditEntry:
        prev = self.entries[-1].record_hash if self.entries else GENESIS_HASH
        entry = AuditEntry.seal(chain_id=self.chain_id, seq=len(self.entries) + 1, kind=kind,
                                worker_id=WORKER, recorded_at=at, prev_hash=prev,
                                record=record)
        self.entries.append(entry)
        return entry

    def requests(self, times: Sequence[datetime]) -> list[AuditEntry]:
        return [self.add(AuditKind.REQUEST, at, _record(n)) for n, at in enumerate(times)]


def _days(*days: int) -> list[datetime]:
    return [T0 + timedelta(days=day) for day in days]


def _opened(at: datetime) -> Chain:
    chain = Chain()
    chain.add(AuditKind.OPEN, at)
    return chain


def _messages(*chains: Chain) -> list[bytes]:
    return [entry.to_message() for chain in chains for entry in chain.entries]


def _errors(report: VerifyReport) -> list[tuple[str, int | None, str]]:
    return [(f.chain_id, f.seq, f.problem) for f in report.errors]


async def _seqs(store: KeyStore, chain: Chain) -> list[int]:
    async with store.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT seq FROM pqkms_audit_record WHERE chain_id = :chain ORDER BY seq"),
            {"chain": chain.chain_id})
        return [int(row[0]) for row in rows]


async def _sql(store: KeyStore, statement: str, **params: object) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(text(statement), params)


async def _delete_as_if_archived(store: KeyStore, chain: Chain, first: int,
                                 through: int) -> None:
    """What a writer of the database can do: delete records ``first..through`` and move
    the chain's anchor onto ``through``, as an archive would have."""
    await _sql(store, "DELETE FROM pqkms_audit_record WHERE chain_id = :chain "
               "AND seq BETWEEN :first AND :through", chain=chain.chain_id, first=first,
               through=through)
    await _sql(store, "UPDATE pqkms_audit_chain SET archived_seq = :through, "
               "archived_hash = :hash WHERE chain_id = :chain", through=through,
               hash=chain.entries[through - 1].record_hash, chain=chain.chain_id)


def _archived(path: Path) -> list[tuple[str, int]]:
    return [(entry.chain_id, entry.seq) for _, entry in read_archive(path)]


class Log:
    """Three chains across the cut-off: ``done`` closed before it, ``spanning`` open
    across it, ``idle`` open with every record before it; and the stream that holds
    them and what archives publish."""

    def __init__(self) -> None:
        self.published = FakeStream()
        self.done = _opened(T0)
        self.done.requests(_days(1, 2))
        self.done.add(AuditKind.CLOSE, T0 + timedelta(days=3))
        self.spanning = _opened(T0 + timedelta(days=10))
        self.spanning.requests(_days(11, 12, 31, 32))
        self.idle = _opened(T0 + timedelta(days=20))
        self.idle.requests(_days(21, 22))

    @property
    def chains(self) -> tuple[Chain, Chain, Chain]:
        return self.done, self.spanning, self.idle

    async def write(self, log: AuditLog) -> None:
        for chain in self.chains:
            await log.append(chain.entries)

    def stream(self) -> list[bytes]:
        return _messages(*self.chains) + list(self.published.published.values())


async def _archive(log: AuditLog, chains: Log, path: Path,
                   before: datetime = CUT) -> ArchiveOutcome:
    return await archive_audit_log(log, chains.published, path, before, chains.stream(),
                                   now=datetime.now(UTC) + timedelta(minutes=5))


def _leftovers(directory: Path) -> list[Path]:
    return sorted(directory.glob("audit*"))


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_a_past_period_leaves_for_a_file_and_the_rest_still_verifies(
    log: AuditLog, store: KeyStore, tmp_path: Path,
) -> None:
    chains = Log()
    await chains.write(log)
    path = tmp_path / "audit-2025-01.jsonl"

    outcome = await _archive(log, chains, path)

    assert outcome.check.intact, outcome.check.lines()
    # done: all 4; spanning: open and days 11-12 (seq 1-3); idle: all but its last (1-2).
    assert (outcome.records, outcome.chains, outcome.whole_chains, outcome.deleted) == \
        (9, 3, 1, 9)
    assert _archived(path) == sorted(
        [(chains.done.chain_id, seq) for seq in (1, 2, 3, 4)]
        + [(chains.spanning.chain_id, seq) for seq in (1, 2, 3)]
        + [(chains.idle.chain_id, seq) for seq in (1, 2)])
    assert _mode(path) == 0o600
    assert _leftovers(tmp_path) == [path]
    assert outcome.lines() == [
        f"archived 9 record(s) of 3 chain(s) (1 whole) recorded before "
        f"2025-01-31T00:00:00.000000Z to {path} (sha256 {outcome.sha256}); 9 deleted from "
        "the database"]
    assert await _seqs(store, chains.done) == []
    assert await _seqs(store, chains.spanning) == [4, 5]
    assert await _seqs(store, chains.idle) == [3]

    for stream in (chains.stream(), None):
        report = await verify_audit_log(log, stream)
        assert report.intact, report.lines()
        # (and the archive's own chain: open, the run, an anchor per chain, close)
        assert (report.chains, report.records, report.open_chains) == (4, 9, 2)
        where = "in the database" if stream is None else "in the stream"
        assert f"archived: 9 record(s) moved to files; 1 archive run(s) {where} (pqkms " \
            "audit verify-archive checks the files)" in report.lines()

    # The idle chain's worker goes on: its next record links to the one it kept.
    chains.idle.requests(_days(40))
    await log.append(chains.idle.entries[-1:])
    report = await verify_audit_log(log, chains.stream())
    assert report.intact, report.lines()

    check = await verify_archive_files([path], log)
    assert check.intact, check.lines()
    assert check.lines()[-1] == ("archive intact: 1 file(s), 9 record(s), 3 chain(s); "
                                 "database: 4 chain(s), 1 archive run(s) known")


async def test_nothing_is_archived_from_a_log_that_is_not_intact(
    log: AuditLog, store: KeyStore, tmp_path: Path,
) -> None:
    chains = Log()
    await chains.write(log)
    await _sql(store, "UPDATE pqkms_audit_record SET outcome = 'ERR_AUTH_001' "
               "WHERE chain_id = :chain AND seq = 2", chain=chains.done.chain_id)
    path = tmp_path / "audit.jsonl"

    outcome = await _archive(log, chains, path)

    assert not outcome.archived
    assert (chains.done.chain_id, 2, "content does not match its record_hash "
            "(record edited)") in _errors(outcome.check)
    assert outcome.lines()[-1].startswith("nothing archived: the audit log is not intact")
    assert _leftovers(tmp_path) == []
    assert await _seqs(store, chains.done) == [1, 2, 3, 4]


async def test_nothing_old_enough_writes_no_file(log: AuditLog, tmp_path: Path) -> None:
    chains = Log()
    await chains.write(log)
    path = tmp_path / "audit.jsonl"

    outcome = await _archive(log, chains, path, before=T0)

    assert outcome.check.intact and not outcome.archived
    assert outcome.lines() == ["nothing archived: no record recorded before "
                               "2025-01-01T00:00:00.000000Z can leave the database (an open "
                               "chain keeps its last record)"]
    assert _leftovers(tmp_path) == []


def _write(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def test_an_existing_file_is_never_overwritten(log: AuditLog, tmp_path: Path) -> None:
    chains = Log()
    await chains.write(log)
    path = tmp_path / "audit.jsonl"
    _write(path, b"keep me\n")

    with pytest.raises(ArchiveFileError, match="exists: an archive file is never overwritten"):
        await _archive(log, chains, path)

    assert _read(path) == b"keep me\n"
    assert chains.published.published == {}  # nothing attested either


async def test_the_anchor_ties_what_remains_to_what_was_archived(
    log: AuditLog, store: KeyStore, tmp_path: Path,
) -> None:
    chains = Log()
    await chains.write(log)
    path = tmp_path / "audit.jsonl"
    await _archive(log, chains, path)
    spanning = chains.spanning.chain_id
    forged = chains.spanning.entries[0].record_hash  # a real hash, the wrong record
    await _sql(store, "UPDATE pqkms_audit_chain SET archived_hash = :forged "
               "WHERE chain_id = :chain", forged=forged, chain=spanning)

    alone = await verify_audit_log(log, None)
    assert (spanning, 4, "prev_hash does not match the archive anchor (record 3, archived): "
            "record 4 or the anchor altered") in _errors(alone)
    streamed = await verify_audit_log(log, chains.stream())
    assert (spanning, 3, "the archive anchor differs from the stream's copy of this record "
            "(anchor or database edited)") in _errors(streamed)
    check = await verify_archive_files([path], log)
    assert not check.intact
    assert [(f.chain_id, f.seq, f.problem) for f in check.findings if f.severity == "error"] \
        == [(spanning, 3, "the database's archive anchor differs from this record in the files")]


async def test_records_deleted_behind_a_moved_anchor_are_found_by_the_stream(
    log: AuditLog, store: KeyStore, tmp_path: Path,
) -> None:
    # Someone deletes records 1..4 of an open chain and moves its anchor past them, as
    # if an archive had: the database alone cannot tell, the stream can.
    chains = Log()
    await chains.write(log)
    spanning = chains.spanning
    await _delete_as_if_archived(store, spanning, 1, 4)
    for stream, where in ((None, "in the database"), (chains.stream(), NO_RUN_IN_STREAM)):
        report = await verify_audit_log(log, stream)
        assert _errors(report) == [(
            spanning.chain_id, 4, f"archived up to here, but no archive run {where} "
            "attests it (records deleted and the anchor moved by hand?)")]
    # Nor does an archive run go ahead on such a log.
    refused = await _archive(log, chains, tmp_path / "audit.jsonl", before=T0 + timedelta(days=5))
    assert not refused.archived and not refused.check.intact
    assert chains.published.published == {}

    # Every remaining record of the chain deleted: an archive never does that.
    await _sql(store, "DELETE FROM pqkms_audit_record WHERE chain_id = :chain",
               chain=spanning.chain_id)
    emptied = await verify_audit_log(log, None)
    assert (spanning.chain_id, 5, "every record after the archived ones (seq > 4) is "
            "missing") in _errors(emptied)
    streamed = await verify_audit_log(log, chains.stream())
    assert (spanning.chain_id, 5, "record 5 in the stream but missing from the database") \
        in _errors(streamed)


async def test_archives_follow_one_another_and_their_files_verify_together(
    log: AuditLog, store: KeyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archive_module, "ARCHIVE_STEP", 2)  # several steps per chain
    chains = Log()
    await chains.write(log)
    first, second = tmp_path / "audit-1.jsonl.gz", tmp_path / "audit-2.jsonl.gz"
    await _archive(log, chains, first)
    chains.spanning.requests(_days(33))
    await log.append(chains.spanning.entries[-1:])

    outcome = await _archive(log, chains, second, before=T0 + timedelta(days=33))

    assert outcome.check.intact, outcome.check.lines()
    assert _archived(second) == [(chains.spanning.chain_id, 4), (chains.spanning.chain_id, 5)]
    assert gzip.decompress(_read(second)).count(b"\n") == 2
    assert await _seqs(store, chains.spanning) == [6]
    report = await verify_audit_log(log, chains.stream())
    assert report.intact, report.lines()
    assert report.archived_records == 11 and report.archive_runs == 2

    together = await verify_archive_files([first, second], log)
    assert together.intact, together.lines()
    assert not [f for f in together.findings if f.severity == "note"], together.lines()
    later_alone = await verify_archive_files([second], None)
    assert later_alone.intact
    assert [f.problem for f in later_alone.findings] == [
        "audit-2.jsonl.gz: the chain starts at seq 4 here: records 1..3 are in an archive "
        "not given (link unchecked)"]
    swapped = await verify_archive_files([second, first], None)
    assert not swapped.intact
    # Against the database every file must be given: the earlier one is missing here.
    missing_first = await verify_archive_files([second], log)
    assert (chains.spanning.chain_id, 1, "archived up to seq 5 in the database, but the "
            "files hold it from seq 4 on (a file not given, or records deleted)") in \
        [(f.chain_id, f.seq, f.problem) for f in missing_first.findings]


async def test_an_edited_archive_file_is_found(log: AuditLog, tmp_path: Path) -> None:
    chains = Log()
    await chains.write(log)
    path = tmp_path / "audit.jsonl"
    await _archive(log, chains, path)
    lines = _read(path).splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"outcome":"OK"', b'"outcome":"ERR_AUTH_001"')
    _write(path, b"".join(lines))

    check = await verify_archive_files([path], log)

    assert not check.intact
    problems = [f.problem for f in check.findings]
    assert "audit.jsonl: content does not match its record_hash (record edited)" in problems
    assert "no archive run recorded in this database or these files wrote this file " \
        "(another database's, or edited or recompressed)" in problems
    _write(path, b"not json\n")
    broken = await verify_archive_files([path], None)
    assert [f.line() for f in broken.findings] == [
        f"error: file {path.name}: {path}, line 1: not an audit record"]


async def test_key_versions_whose_creation_records_were_archived_are_not_flagged(
    log: AuditLog, store: KeyStore, tenant: TenantRecord, tmp_path: Path,
    new_material: Callable[[], NewKeyMaterial],
) -> None:
    await store.generate_first(tenant.tenant_id, Algorithm.KYBER768, new_material(), None)
    now = datetime.now(UTC)
    recorded = now - timedelta(microseconds=1)
    chain = _opened(recorded)
    chain.add(AuditKind.REQUEST, recorded, _record(
        0, operation=Subject.KEYS_GENERATE.value, tenant_id=tenant.tenant_id,
        algorithm=Algorithm.KYBER768.value, key_version=1))
    chain.add(AuditKind.CLOSE, recorded)
    await log.append(chain.entries)
    later = now + timedelta(minutes=5)

    published = FakeStream()
    await archive_audit_log(log, published, tmp_path / "audit.jsonl", now,
                            _messages(chain), now=later)

    assert await _seqs(store, chain) == []
    report = await verify_audit_log(log, None, now=later)
    assert report.intact, report.lines()
    stream = _messages(chain) + list(published.published.values())
    streamed = await verify_audit_log(log, stream, now=later)
    assert streamed.intact, streamed.lines()
    # A version created after the cut-off without its record is still found.
    await store.rotate(tenant.tenant_id, Algorithm.KYBER768, new_material(), None)
    rotated = await verify_audit_log(log, None, now=datetime.now(UTC) + timedelta(minutes=5))
    assert [f.problem.split(" (created")[0] for f in rotated.errors] == ["version 2"]


async def test_a_record_an_archive_left_cannot_be_deleted_as_if_archived(
    log: AuditLog, store: KeyStore, tmp_path: Path,
) -> None:
    # The idle chain keeps its last record (seq 3) out of the archive; its worker goes
    # on; then a writer deletes seq 3 and moves the anchor onto it.
    chains = Log()
    await chains.write(log)
    path = tmp_path / "audit.jsonl"
    await _archive(log, chains, path)
    idle = chains.idle
    idle.requests(_days(40))
    await log.append(idle.entries[-1:])
    await _delete_as_if_archived(store, idle, 3, 3)

    for stream, where in ((None, "database"), (chains.stream(), "stream")):
        report = await verify_audit_log(log, stream)
        assert _errors(report) == [(
            idle.chain_id, 3, f"archived up to here, beyond seq 2, the last an archive run in "
            f"the {where} attests (records deleted and the anchor moved by hand?)")]
    check = await verify_archive_files([path], log)
    assert [(f.chain_id, f.seq, f.problem) for f in check.findings if f.severity == "error"] \
        == [(idle.chain_id, 3, "archived up to here in the database, but the files hold up "
             "to seq 2 (a file not given, or records deleted)")]


async def test_a_run_whose_records_did_not_reach_the_stream_deletes_nothing_and_excuses_nothing(
    log: AuditLog, store: KeyStore, tmp_path: Path,
) -> None:
    chains = Log()
    await chains.write(log)
    chains.published.fail = True
    path = tmp_path / "audit.jsonl"

    with pytest.raises(ArchiveNotAttested, match=r"did not reach the PQKMS_AUDIT stream .*"
                       r"nothing was deleted: .*audit.jsonl holds the records"):
        await _archive(log, chains, path)

    assert _leftovers(tmp_path) == [path]  # kept: the run may have reached the stream
    assert await _seqs(store, chains.done) == [1, 2, 3, 4]
    # A writer now deletes what the run would have: its records in the database alone
    # (newer than what the stream holds) do not vouch for that.
    done = chains.done
    await _delete_as_if_archived(store, done, 1, 4)
    report = await verify_audit_log(log, chains.stream())
    assert (done.chain_id, 4, f"archived up to here, but no archive run {NO_RUN_IN_STREAM} "
            "attests it (records deleted and the anchor moved by hand?)") in _errors(report)


async def test_a_stopped_deletion_and_a_second_run_leave_files_that_verify_together(
    log: AuditLog, store: KeyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    chains = Log()
    await chains.write(log)
    first, second = tmp_path / "audit-1.jsonl", tmp_path / "audit-2.jsonl"
    real_drop = audit_archive_rows.drop_archived
    calls = 0

    async def stopped(*args: object) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise KeyboardInterrupt  # Ctrl-C after the first chain
        return await real_drop(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(archive_module, "drop_archived", stopped)
    with pytest.raises(KeyboardInterrupt):
        await _archive(log, chains, first)
    monkeypatch.setattr(archive_module, "drop_archived", real_drop)
    assert (await verify_audit_log(log, chains.stream())).intact

    outcome = await _archive(log, chains, second)

    assert outcome.check.intact and outcome.archived, outcome.lines()
    report = await verify_audit_log(log, chains.stream())
    assert report.intact, report.lines()
    check = await verify_archive_files([first, second], log)
    assert check.intact, check.lines()
    assert any("repeated, identical" in f.problem for f in check.findings)


async def test_anchors_whose_run_left_the_stream_are_taken_from_the_database(
    log: AuditLog, tmp_path: Path,
) -> None:
    # The stream's max age removed everything up to and including the archive run;
    # it now holds only what came after.
    chains = Log()
    await chains.write(log)
    await _archive(log, chains, tmp_path / "audit.jsonl")
    later = _opened(datetime.now(UTC) + timedelta(hours=1))
    later.requests([datetime.now(UTC) + timedelta(hours=2)])
    await log.append(later.entries)

    report = await verify_audit_log(log, _messages(later))

    assert report.intact, report.lines()


async def test_an_archive_recorded_in_the_database_alone_does_not_excuse_a_key_version(
    log: AuditLog, store: KeyStore, tenant: TenantRecord,
    new_material: Callable[[], NewKeyMaterial],
) -> None:
    # A writer of the database adds a key version without its creation record, and a
    # well-formed archive record of its own, whose cut-off lies after the version.
    now = datetime.now(UTC)
    worker = _opened(now - timedelta(hours=1))
    await log.append(worker.entries)
    await store.generate_first(tenant.tenant_id, Algorithm.KYBER768, new_material(), None)
    forged = _opened(now)
    forged.add(AuditKind.REQUEST, now + timedelta(seconds=2), _record(
        0, operation=AUDIT_ARCHIVE_OPERATION, tenant_id=None, algorithm=None,
        key_version=None, request_id=f"before={canonical_time(now + timedelta(seconds=1))} "
        f"sha256={'0' * 64}"))
    forged.add(AuditKind.CLOSE, now + timedelta(seconds=2))
    await log.append(forged.entries)
    later = now + timedelta(minutes=5)

    # The stream (which the writer cannot add to) attests no archive: the version counts.
    streamed = await verify_audit_log(log, _messages(worker), now=later)
    assert [f.problem.split(" (created")[0] for f in streamed.errors] == ["version 1"]
    assert streamed.archive_runs == 0
    # Without the stream the database is trusted, as documented.
    assert (await verify_audit_log(log, None, now=later)).archive_runs == 1


def _forged_run(at: datetime, anchors: Sequence[tuple[Chain, int]]) -> Chain:
    """A well-formed archive run a writer of the database could seal, dated ``at``."""
    run = _opened(at)
    run.add(AuditKind.REQUEST, at, _record(
        0, operation=AUDIT_ARCHIVE_OPERATION, tenant_id=None, algorithm=None,
        key_version=None, request_id=f"before={canonical_time(at)} sha256={'0' * 64}"))
    for chain, seq in anchors:
        run.add(AuditKind.REQUEST, at, _record(
            0, operation=AUDIT_ARCHIVE_ANCHOR_OPERATION, tenant_id=None, algorithm=None,
            key_version=None,
            request_id=f"{chain.chain_id} {seq} {chain.entries[seq - 1].record_hash}"))
    run.add(AuditKind.CLOSE, at)
    return run


async def test_a_backdated_run_forged_in_the_database_does_not_hide_records_the_stream_holds(
    log: AuditLog, store: KeyStore,
) -> None:
    chains = Log()
    await chains.write(log)
    await _delete_as_if_archived(store, chains.done, 1, 4)
    await _delete_as_if_archived(store, chains.spanning, 1, 3)
    # Dated long before anything the stream holds, as if its max age had expired it.
    forged = _forged_run(datetime(2000, 1, 1, tzinfo=UTC),
                         [(chains.done, 4), (chains.spanning, 3)])
    await log.append(forged.entries)

    report = await verify_audit_log(log, chains.stream())

    assert _errors(report) == [
        (chain.chain_id, seq, f"archived up to here by an archive run the stream does not "
         f"hold, but the stream still holds {seq} of the archived records (records deleted "
         "and an archive run forged in the database?)")
        for chain, seq in sorted([(chains.done, 4), (chains.spanning, 3)],
                                 key=lambda pair: pair[0].chain_id)]


async def test_a_run_forged_in_the_database_counts_for_nothing_once_the_stream_holds_a_run(
    log: AuditLog, store: KeyStore, tmp_path: Path,
) -> None:
    chains = Log()
    await chains.write(log)
    await _archive(log, chains, tmp_path / "audit.jsonl", before=T0 + timedelta(days=5))
    later = _opened(datetime.now(UTC))
    later.requests([datetime.now(UTC)] * 2)
    await log.append(later.entries)
    await _delete_as_if_archived(store, later, 1, 2)
    await log.append(_forged_run(datetime(2000, 1, 1, tzinfo=UTC), [(later, 2)]).entries)

    report = await verify_audit_log(log, chains.stream() + _messages(later))

    assert _errors(report) == [(later.chain_id, 2, "archived up to here, but no archive run "
                                "in the stream attests it (records deleted and the anchor "
                                "moved by hand?)")]


async def test_an_anchor_moved_while_the_archive_checks_the_log_is_not_attested(
    log: AuditLog, store: KeyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    chains = Log()
    await chains.write(log)
    real_verify = verify_audit_log

    async def then_a_writer(*args: object, **options: object) -> VerifyReport:
        report = await real_verify(*args, **options)  # type: ignore[arg-type]
        await _delete_as_if_archived(store, chains.spanning, 1, 4)
        return report

    monkeypatch.setattr(archive_module, "verify_audit_log", then_a_writer)
    with pytest.raises(ArchiveRefused, match="its archive anchor moved while the log was "
                                             "checked"):
        await _archive(log, chains, tmp_path / "audit.jsonl")
    assert _leftovers(tmp_path) == [] and chains.published.published == {}


async def test_key_versions_stay_excused_when_the_stream_no_longer_holds_the_run(
    log: AuditLog, store: KeyStore, tenant: TenantRecord, tmp_path: Path,
    new_material: Callable[[], NewKeyMaterial],
) -> None:
    # An idle worker's chain keeps an old record; a key version's creation record is
    # archived; then the stream's max age removes everything up to the run.
    idle = _opened(T0)
    idle.requests(_days(1))
    await log.append(idle.entries)
    await store.generate_first(tenant.tenant_id, Algorithm.KYBER768, new_material(), None)
    now = datetime.now(UTC)
    creation = _opened(now - timedelta(microseconds=2))
    creation.add(AuditKind.REQUEST, now - timedelta(microseconds=1), _record(
        0, operation=Subject.KEYS_GENERATE.value, tenant_id=tenant.tenant_id,
        algorithm=Algorithm.KYBER768.value, key_version=1))
    creation.add(AuditKind.CLOSE, now - timedelta(microseconds=1))
    await log.append(creation.entries)
    later = now + timedelta(minutes=5)
    await archive_audit_log(log, FakeStream(), tmp_path / "audit.jsonl", now,
                            _messages(idle, creation), now=later)
    newer = _opened(later)
    await log.append(newer.entries)

    report = await verify_audit_log(log, _messages(newer), now=later)

    assert report.intact, report.lines()
    assert "note: archive anchors: the stream holds no archive run" in "\n".join(report.lines())


async def test_a_repeated_record_with_other_content_is_an_error(
    log: AuditLog, tmp_path: Path,
) -> None:
    chains = Log()
    await chains.write(log)
    path = tmp_path / "audit-1.jsonl"
    await _archive(log, chains, path)
    # A second file repeats the closed chain, record 2 changed and everything after it
    # sealed again: each record hashes and links.
    done = chains.done
    other = Chain()
    other.chain_id = done.chain_id
    for entry in done.entries:
        record = None if entry.kind != AuditKind.REQUEST else _record(
            entry.seq, outcome="ERR_AUTH_001" if entry.seq == 2 else "OK")
        other.add(AuditKind(entry.kind), entry.recorded_at, record)
    forged = tmp_path / "audit-2.jsonl"
    _write(forged, b"".join(entry.to_message() + b"\n" for entry in other.entries))

    check = await verify_archive_files([path, forged], None)

    assert (done.chain_id, 4, "audit-2.jsonl: differs from the same record in an earlier "
            "file") in [(f.chain_id, f.seq, f.problem) for f in check.findings]
    assert not check.intact


async def test_a_file_that_cannot_be_written_archives_nothing(
    log: AuditLog, store: KeyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    chains = Log()
    await chains.write(log)

    def full_disk(_descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_file.os, "fsync", full_disk)
    with pytest.raises(ArchiveFileError, match=r"could not be written \(No space left on "
                                               r"device\); nothing was archived"):
        await _archive(log, chains, tmp_path / "audit.jsonl")

    assert _leftovers(tmp_path) == [] and chains.published.published == {}
    assert await _seqs(store, chains.done) == [1, 2, 3, 4]


async def test_a_file_system_without_hard_links_still_gets_the_file(
    log: AuditLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    chains = Log()
    await chains.write(log)

    def no_links(*_paths: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(archive_file.os, "link", no_links)
    path = tmp_path / "audit.jsonl"

    outcome = await _archive(log, chains, path)

    assert outcome.archived and _leftovers(tmp_path) == [path]
    assert (await verify_archive_files([path], log)).intact
