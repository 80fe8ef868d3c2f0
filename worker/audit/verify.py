"""``pqkms audit verify``: check every chain in the database, and against the stream.

Database checks, per chain: sequence numbers contiguous from 1; every record's hash
recomputed from its content and ``prev_hash``; every ``prev_hash`` equal to the hash of
the record before it (the first one to :data:`GENESIS_HASH`); an open record first and a
close record only last; a chain whose ``pqkms_audit_chain`` row says it closed at seq N
has records 1..N and ends with that row's hash.

Stream cross-check (when NATS answers and ``PQKMS_AUDIT`` exists): the stream is read
first, then the database (a record is committed before it is published, so everything
in the stream read is already in the database); every record present in both must carry
the same hash, and every record of the stream must be in the database. That catches
what the database alone cannot: a deleted tail of an open chain, a whole chain deleted,
and an edit whose author recomputed every later hash. Database records missing from the
stream are only counted (the stream's limits may have expired them).

A gap an operator has examined and accepted (a database restored from a backup, key
versions made by workers older than the audit of key creations) would fail every later
run; ``since`` judges only chains with a record (in the database or the stream) from
that time on and key versions created from then on, and the report counts the rest.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from schemas.audit import AUDIT_STREAM, AuditKind
from schemas.subjects import Subject
from worker.audit.archive_record import ArchiveAnchor, ArchiveRun, anchor_of, run_of
from worker.audit.entry import GENESIS_HASH, AuditEntry, canonical_time
from worker.config import Settings
from worker.store.audit_log import AuditLog, ChainHead, KeyVersionRow

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = [
    "Finding",
    "InvalidSince",
    "Severity",
    "VerifyReport",
    "parse_since",
    "audit_connection",
    "read_stream_bodies",
    "verify_audit_log",
    "verify_from_settings",
]

_KINDS = frozenset(kind.value for kind in AuditKind)
# Where the archive runs that vouch for anchors were found (see _attesting_runs).
_IN_DATABASE = "in the database"
_IN_STREAM = "in the stream"
_BEFORE_STREAM = "in the stream, or in the database before what the stream holds"
_MISSING_FROM_DATABASE = "in the stream but missing from the database"
_NO_CREATION_RECORD = "has no audit record of its creation"
# Printed once under the findings they explain (the known causes, and the way on).
_HINT_MISSING_FROM_DATABASE = (
    f"records {_MISSING_FROM_DATABASE} were deleted from it, or the database was restored "
    "from a backup: records written after the backup are in the stream only, for good "
    "(docs/audit.md, 'After a restore')"
)
_HINT_NO_CREATION_RECORD = (
    f"a key version that {_NO_CREATION_RECORD}: a worker stopped between the change and "
    "its record; a worker older than the audit of key creations made it (a rolling "
    "upgrade, or a database upgraded from a release whose scheduler did not audit its "
    "rotations); or the database was restored from a backup (records after the backup are "
    "in the stream only); see docs/audit.md, 'After a restore'"
)
_HINT_SINCE = (
    "once such a gap is examined and accepted, 'pqkms audit verify --since TIME' judges "
    "only chains with records from TIME on and key versions created from then on"
)


class InvalidSince(ValueError):
    """``--since`` is not an ISO 8601 time, or lies in the future."""


def parse_since(text: str, *, option: str = "--since") -> datetime:
    """An ISO 8601 time (``2026-01-02T03:04:05Z``, an offset, or a date) in UTC; one
    without an offset is taken as UTC. ``option`` names it in the error."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidSince(f"{option}: not an ISO 8601 time: {text!r} "
                           "(e.g. 2026-01-02T03:04:05Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class Severity(StrEnum):
    """``error`` makes verification fail; ``note`` is information."""

    ERROR = "error"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing verification found, located by chain and (where it applies) seq."""

    chain_id: str
    seq: int | None
    problem: str
    severity: Severity = Severity.ERROR
    scope: str = "chain"  # "key" for the cross-check of key versions

    def line(self) -> str:
        """One report line."""
        where = f"{self.scope} {self.chain_id}" + ("" if self.seq is None else f" seq {self.seq}")
        return f"{self.severity.value}: {where}: {self.problem}"


@dataclass(slots=True)
class VerifyReport:
    """What ``pqkms audit verify`` prints. With ``since``, ``chains`` and ``records``
    count what was judged; ``skipped_*`` what was left out for being older."""

    chains: int = 0
    records: int = 0
    open_chains: int = 0
    stream: str = "not checked"
    stream_records: int = 0
    findings: list[Finding] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    since: datetime | None = None
    skipped_chains: int = 0
    skipped_records: int = 0
    skipped_key_versions: int = 0
    archive_runs: int = 0
    archived_records: int = 0
    archive_runs_source: str = _IN_DATABASE

    @property
    def errors(self) -> list[Finding]:
        """The findings that make verification fail."""
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def intact(self) -> bool:
        """No error found."""
        return not self.errors

    def lines(self) -> list[str]:
        """The full report: findings, hints, what ``since`` skipped, then a summary."""
        lines = [finding.line() for finding in self.findings]
        lines += [f"hint: {hint}" for hint in self.hints]
        window = ""
        if self.since is not None:
            since = canonical_time(self.since)
            window = f"; judged from {since} on"
            lines.append(
                f"skipped (before --since {since}): {self.skipped_chains} chain(s) whose "
                f"last record is older ({self.skipped_records} record(s) in the database), "
                f"{self.skipped_key_versions} key version(s) created before it"
            )
        if self.archived_records or self.archive_runs:
            lines.append(f"archived: {self.archived_records} record(s) moved to files; "
                         f"{self.archive_runs} archive run(s) {self.archive_runs_source} "
                         "(pqkms audit verify-archive checks the files)")
        verdict = "intact" if self.intact else f"NOT intact: {len(self.errors)} error(s)"
        lines.append(
            f"audit log {verdict}: {self.chains} chain(s), {self.records} record(s), "
            f"{self.open_chains} open; stream: {self.stream}{window}"
        )
        return lines


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None or second is None:
        return first or second
    return max(first, second)


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers as contiguous ``(first, last)`` ranges."""
    spans: list[tuple[int, int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], number)
        else:
            spans.append((number, number))
    return spans


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


class _StreamCopy:
    """Hashes of the stream's records, by chain and seq; checks each copy's own hash.

    Findings about a chain's copies, and its latest record time, are kept by chain: they
    count only when that chain is judged (see ``since``).
    """

    def __init__(self, bodies: list[bytes], findings: list[Finding]) -> None:
        self.hashes: dict[str, dict[int, str]] = defaultdict(dict)
        self.findings: dict[str, list[Finding]] = defaultdict(list)
        self.latest: dict[str, datetime] = {}
        self.oldest: datetime | None = None  # the earliest record the stream still holds
        self.archives = _Archives()
        # Per chain, how many of its copies lie at or below its anchor (archived).
        self.archived_copies: dict[str, int] = {}
        self.count = 0
        for body in bodies:
            try:
                entry = AuditEntry.from_message(body)
            except ValueError:
                findings.append(Finding("?", None, "unreadable message in the stream",
                                        Severity.NOTE))
                continue
            self.count += 1
            chain = self.findings[entry.chain_id]
            if entry.computed_hash() != entry.record_hash:
                chain.append(Finding(entry.chain_id, entry.seq,
                                     "stream copy does not match its own hash"))
            else:
                self.archives.add(entry)
            if self.oldest is None or entry.recorded_at < self.oldest:
                self.oldest = entry.recorded_at
            known = self.hashes[entry.chain_id].get(entry.seq)
            if known is not None and known != entry.record_hash:
                chain.append(Finding(entry.chain_id, entry.seq,
                                     "two different stream copies of the same record"))
            self.hashes[entry.chain_id][entry.seq] = entry.record_hash
            latest = _later(self.latest.get(entry.chain_id), entry.recorded_at)
            assert latest is not None
            self.latest[entry.chain_id] = latest


class _ChainCheck:
    """Walks one chain's records in seq order; its findings are its own until the chain
    is judged or skipped."""

    def __init__(self, chain_id: str, stream: _StreamCopy | None,
                 head: ChainHead | None) -> None:
        self.chain_id = chain_id
        self.stream = None if stream is None else stream.hashes.pop(chain_id, {})
        self.findings: list[Finding] = []
        # Records 1..archived are in archive files: the chain goes on from its anchor.
        self.archived = 0 if head is None else head.archived_seq
        self.expected_seq = self.archived + 1
        self.prev_hash: str | None = GENESIS_HASH
        self.last: AuditEntry | None = None
        self.not_in_stream = 0
        self.records = 0
        self.latest: datetime | None = None  # its latest record or chain-row time
        self.archived_copies = 0
        if head is not None and self.archived:
            self.prev_hash = head.archived_hash
            if head.archived_hash is None:
                self.error(self.archived, "archived up to here, but the anchor has no hash")
            if stream is not None and self.stream is not None:
                self._take_archived_copies(head, self.stream)
                stream.archived_copies[chain_id] = self.archived_copies

    def _take_archived_copies(self, head: ChainHead, copies: dict[int, str]) -> None:
        """Stream copies of archived records are in an archive file, not missing; the
        anchor must be the stream's copy of the last archived record. (Whether an
        archive run attests the anchor is checked once every record is read.)"""
        anchor_copy = copies.get(self.archived)
        if anchor_copy is not None and anchor_copy != head.archived_hash:
            self.error(self.archived, "the archive anchor differs from the stream's copy of "
                                      "this record (anchor or database edited)")
        archived = [seq for seq in copies if seq <= self.archived]
        for seq in archived:
            del copies[seq]
        self.archived_copies = len(archived)

    def error(self, seq: int | None, problem: str) -> None:
        self.findings.append(Finding(self.chain_id, seq, problem))

    def add(self, entry: AuditEntry) -> None:
        seq = entry.seq
        self.records += 1
        self.latest = _later(self.latest, entry.recorded_at)
        if seq != self.expected_seq:
            self.error(self.expected_seq, f"{_span(self.expected_seq, seq - 1)} missing")
            self.prev_hash = None  # the link over a gap cannot be checked
        if self.last is not None and self.last.kind == AuditKind.CLOSE:
            self.error(seq, "record after the chain's close record")
        if entry.computed_hash() != entry.record_hash:
            self.error(seq, "content does not match its record_hash (record edited)")
        if self.prev_hash is not None and entry.prev_hash != self.prev_hash:
            if seq == self.archived + 1 and self.archived:
                self.error(seq, f"prev_hash does not match the archive anchor (record "
                                f"{self.archived}, archived): record {seq} or the anchor "
                                "altered")
            elif seq == 1:
                self.error(seq, "prev_hash is not the genesis hash (record altered)")
            else:
                self.error(seq, f"prev_hash does not match the hash of record {seq - 1} "
                                f"(record {seq - 1} or {seq} altered, hashes recomputed)")
        if entry.kind not in _KINDS:
            self.error(seq, f"unknown kind {entry.kind!r}")
        elif (seq == 1) != (entry.kind == AuditKind.OPEN):
            self.error(seq, "the open record must be record 1, and only record 1")
        if self.stream is not None:
            copy = self.stream.pop(seq, None)
            if copy is None:
                self.not_in_stream += 1
            elif copy != entry.record_hash:
                self.error(seq, "differs from its copy in the stream (edited in the database)")
        self.expected_seq = seq + 1
        self.prev_hash = entry.record_hash
        self.last = entry

    def finish(self, head: ChainHead | None) -> bool:
        """Checks at the end of the chain; ``True`` when the chain is still open."""
        last = self.last
        last_seq = self.archived if last is None else last.seq
        closed_record = last is not None and last.kind == AuditKind.CLOSE
        if head is not None:
            self.latest = _later(_later(self.latest, head.opened_at), head.closed_at)
        if head is None:
            self.error(None, "no pqkms_audit_chain row for this chain (deleted)")
        elif head.last_seq is not None:  # the chain row says it closed at head.last_seq
            if last_seq < head.last_seq:
                self.error(last_seq + 1, f"{_span(last_seq + 1, head.last_seq)} missing at "
                           f"the end (the chain was closed at seq {head.last_seq})")
            elif last is not None and last.seq == head.last_seq and \
                    last.record_hash != head.last_hash:
                self.error(last.seq, "close record differs from the one recorded at close")
            elif last is None and head.archived_hash != head.last_hash:
                self.error(head.last_seq, "archived whole, but its anchor differs from the "
                                          "close record recorded at close")
        elif closed_record:
            self.error(last_seq, "close record present but the chain row says open")
        if self.stream:
            for first, end in _ranges(list(self.stream)):
                self.error(first, f"{_span(first, end)} {_MISSING_FROM_DATABASE}")
        is_open = not closed_record and (head is None or head.last_seq is None)
        if is_open and last is not None:
            self.findings.append(Finding(
                self.chain_id, None,
                f"open (last record {last_seq}): its worker is running or stopped without "
                "closing; its tail is checked only against the stream", Severity.NOTE))
        if self.not_in_stream:
            self.findings.append(Finding(
                self.chain_id, None,
                f"{self.not_in_stream} record(s) not in the stream (expired by the stream's "
                "limits, or published after the stream was read)", Severity.NOTE))
        return is_open


class _Archives:
    """What archive runs' own records attest: the runs (by the chain that records each)
    and, per chain, the furthest anchor attested."""

    def __init__(self) -> None:
        self.runs: dict[str, ArchiveRun] = {}
        self.anchors: dict[str, ArchiveAnchor] = {}

    def add(self, entry: AuditEntry) -> None:
        run = run_of(entry)
        if run is not None:
            self.runs[run.chain_id] = run
            return
        anchor = anchor_of(entry)
        if anchor is not None:
            known = self.anchors.get(anchor.chain_id)
            if known is None or (anchor.seq, anchor.recorded_at) > (known.seq,
                                                                     known.recorded_at):
                self.anchors[anchor.chain_id] = anchor

    @property
    def latest_before(self) -> datetime | None:
        """The latest cut-off: every record before it may be in an archive file."""
        return max((run.recorded_before for run in self.runs.values()), default=None)


# A version younger than this may still have its record in a worker's group commit.
CREATION_GRACE = timedelta(seconds=60)
_CREATING = frozenset({Subject.KEYS_GENERATE.value, Subject.KEYS_ROTATE.value})


class _Creations:
    """Which key versions the log records as created (a generate or rotate that ended OK).

    A worker commits a key change, then its audit record; a worker killed in between
    leaves a version without one. The chains stay intact, so only this cross-check can
    tell. Versions created before the log's first record (the audit was off) are not
    expected to have one.
    """

    def __init__(self) -> None:
        self._recorded: set[tuple[str | None, str | None, int | None]] = set()
        self._first: datetime | None = None

    def add(self, entry: AuditEntry) -> None:
        if self._first is None or entry.recorded_at < self._first:
            self._first = entry.recorded_at
        if entry.operation in _CREATING and entry.outcome == "OK":
            self._recorded.add((entry.tenant_id, entry.algorithm, entry.key_version))

    def unrecorded(self, versions: list[KeyVersionRow], now: datetime,
                   since: datetime | None, archived_before: datetime | None) -> list[Finding]:
        """Versions created since the log's first record (and ``since``, and the latest
        archive's cut-off: older creation records are in archive files) and before the
        grace period, without a creation record."""
        if self._first is None and archived_before is None:
            return []  # no audit at all: nothing to hold the versions against
        start = max(moment for moment in (self._first, since, archived_before)
                    if moment is not None)
        settled = now - CREATION_GRACE
        return [
            Finding(f"{row.tenant_id}/{row.algorithm}", None,
                    f"version {row.version} (created {row.created_at.isoformat()}) "
                    f"{_NO_CREATION_RECORD} (a worker stopped before its record, a worker "
                    "older than creation records, or a restored database? see the hint)",
                    scope="key")
            for row in versions
            if start <= row.created_at <= settled
            and (row.tenant_id, row.algorithm, row.version) not in self._recorded
        ]


def _attesting_runs(database: _Archives, stream: _StreamCopy | None) -> tuple[_Archives, str]:
    """The archive runs that count, and whether they are the database's records for want
    of any in the stream. Every run attests every anchor, so a stream holding any run
    holds the latest: then only the stream's count (a run recorded in the database alone
    could be a writer's). A stream holding none (its max age expired the last run, or it
    was re-created) leaves the database's runs older than anything the stream holds."""
    if stream is None:
        return database, _IN_DATABASE
    if stream.archives.runs:
        return stream.archives, _IN_STREAM
    expired = _Archives()
    for run in database.runs.values():
        if stream.oldest is None or run.recorded_at < stream.oldest:
            expired.runs[run.chain_id] = run
    for anchor in database.anchors.values():
        if stream.oldest is None or anchor.recorded_at < stream.oldest:
            expired.anchors[anchor.chain_id] = anchor
    return expired, _BEFORE_STREAM


def _unattested_anchors(heads: Mapping[str, ChainHead], runs: _Archives, where: str,
                        stream: _StreamCopy | None) -> list[Finding]:
    """Every anchor must be one an archive run attests (or short of it: a run whose
    deletion stopped), with the same hash. Where the runs are the database's for want of
    any in the stream, the stream must no longer hold copies of the archived records:
    a run that left the stream took older records with it."""
    findings = []
    for chain_id, head in sorted(heads.items()):
        if not head.archived_seq:
            continue
        attested = runs.anchors.get(chain_id)
        copies = 0 if stream is None or where != _BEFORE_STREAM else \
            stream.archived_copies.get(chain_id, 0)
        if attested is None:
            problem = (f"archived up to here, but no archive run {where} attests it (records "
                       "deleted and the anchor moved by hand?)")
        elif head.archived_seq > attested.seq:
            problem = (f"archived up to here, beyond seq {attested.seq}, the last an archive "
                       f"run {where} attests (records deleted and the anchor moved by hand?)")
        elif head.archived_seq == attested.seq and head.archived_hash != attested.record_hash:
            problem = "the archive anchor differs from the one its archive run attests"
        elif copies:
            problem = (f"archived up to here by an archive run the stream does not hold, but "
                       f"the stream still holds {copies} of the archived records (records "
                       "deleted and an archive run forged in the database?)")
        else:
            continue
        findings.append(Finding(chain_id, head.archived_seq, problem))
    return findings


async def verify_audit_log(log: AuditLog, stream_bodies: list[bytes] | None, *,
                           now: datetime | None = None,
                           since: datetime | None = None) -> VerifyReport:
    """Check every chain of ``log``; cross-check against ``stream_bodies`` (the stream's
    messages, read *before* calling this) unless it is ``None``, and the key versions
    against the records of their creation (``now``: the time they are judged at).

    With ``since`` (aware), only chains with a record or chain-row time (database or
    stream copy) at or after it, and key versions created at or after it, are judged; a
    chain that is judged is judged whole, from its first record. ``since`` passes over
    gaps only: a chain with any finding but records missing from the database (an edit,
    a broken link, a conflicting copy) is judged whatever its times, which a writer of
    the database could set back without recomputing a hash.
    """
    report = VerifyReport(since=since)
    findings = report.findings
    stream: _StreamCopy | None = None

    def judged(latest: datetime | None, findings: list[Finding]) -> bool:
        # ``since`` accepts gaps (records the database lacks), never edits: a chain with
        # any other finding is judged whatever its times say. Its times come from the
        # rows being judged, which a writer could set back without recomputing a hash.
        if since is None or latest is None or latest >= since:
            return True
        return any(finding.severity is not Severity.NOTE
                   and _MISSING_FROM_DATABASE not in finding.problem for finding in findings)

    async with log.snapshot() as snapshot:
        heads = {head.chain_id: head for head in await snapshot.chains()}
        if stream_bodies is not None:
            stream = _StreamCopy(stream_bodies, findings)
            report.stream_records = stream.count
        check: _ChainCheck | None = None
        seen: set[str] = set()

        def finish(chain: _ChainCheck) -> None:
            is_open = chain.finish(heads.get(chain.chain_id))
            copies = [] if stream is None else stream.findings.pop(chain.chain_id, [])
            latest = chain.latest if stream is None else _later(
                chain.latest, stream.latest.pop(chain.chain_id, None))
            if not judged(latest, copies + chain.findings):
                report.skipped_chains += 1
                report.skipped_records += chain.records
                return
            report.chains += 1
            report.records += chain.records
            report.open_chains += is_open
            findings.extend(copies)
            findings.extend(chain.findings)

        creations = _Creations()
        archives = _Archives()
        async for entry in snapshot.entries():
            creations.add(entry)
            archives.add(entry)
            if check is None or entry.chain_id != check.chain_id:
                if check is not None:
                    finish(check)
                seen.add(entry.chain_id)
                check = _ChainCheck(entry.chain_id, stream, heads.get(entry.chain_id))
            check.add(entry)
        if check is not None:
            finish(check)
        versions = await snapshot.key_versions()
        runs, where = _attesting_runs(archives, stream)
        report.archive_runs = len(runs.runs)
        report.archived_records = sum(head.archived_seq for head in heads.values())
        report.archive_runs_source = where
        findings.extend(creations.unrecorded(versions, now or datetime.now(UTC), since,
                                             runs.latest_before))
        if since is not None:
            report.skipped_key_versions = sum(row.created_at < since for row in versions)
    for chain_id in sorted(set(heads) - seen):
        head = heads[chain_id]
        empty = _ChainCheck(chain_id, stream, head)
        if not empty.archived:
            empty.error(None, "the chain row exists but every record of the chain is missing")
        elif head.last_seq is None:  # an archive keeps an open chain's last record
            empty.error(empty.archived + 1, f"every record after the archived ones (seq > "
                                            f"{empty.archived}) is missing")
        finish(empty)
    findings.extend(_unattested_anchors(heads, runs, where, stream))
    if where == _BEFORE_STREAM and report.archived_records:
        findings.append(Finding("anchors", None, "the stream holds no archive run (its max age "
                                "expired the last one, or it was re-created): archive anchors "
                                "are checked against the database's records of the runs; the "
                                "next archive run attests them in the stream again",
                                Severity.NOTE, scope="archive"))
    if stream is not None:
        for chain_id, copies in sorted(stream.hashes.items()):
            if not judged(stream.latest.get(chain_id), stream.findings.get(chain_id, [])):
                report.skipped_chains += 1
                continue
            findings.extend(stream.findings.pop(chain_id, []))
            for first, end in _ranges(list(copies)):
                findings.append(Finding(chain_id, first, f"{_span(first, end)} "
                                        f"{_MISSING_FROM_DATABASE} (whole chain)"))
    findings.sort(key=lambda f: (f.severity is Severity.NOTE, f.chain_id, f.seq or 0))
    _add_hints(report)
    return report


def _add_hints(report: VerifyReport) -> None:
    """One line per known kind of gap found, naming its causes and the way on."""
    problems = [finding.problem for finding in report.errors]
    if any(_MISSING_FROM_DATABASE in problem for problem in problems):
        report.hints.append(_HINT_MISSING_FROM_DATABASE)
    if any(_NO_CREATION_RECORD in problem for problem in problems):
        report.hints.append(_HINT_NO_CREATION_RECORD)
    if report.hints:
        report.hints.append(_HINT_SINCE)


@asynccontextmanager
async def audit_connection(settings: Settings) -> AsyncIterator[tuple[Client | None, str]]:
    """A connection to the NATS servers of ``settings``, or ``None`` and why not."""
    import nats

    from worker.nats_security import nats_security, redacted_urls

    async def quiet(_error: Exception) -> None:
        return None

    servers = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
    try:
        # (max_reconnect_attempts=0 would retry an unreachable server for ever.)
        client = await asyncio.wait_for(nats.connect(
            servers, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=1,
            error_cb=quiet, **nats_security(settings).nats_py_options(),
        ), timeout=10)
    except Exception as exc:
        yield None, (f"NATS at {redacted_urls(settings.nats_url)} not reachable: "
                     f"{type(exc).__name__}")
        return
    try:
        yield client, redacted_urls(settings.nats_url)
    finally:
        await client.close()


async def read_stream_bodies(client: Client | None, where: str) -> tuple[list[bytes] | None, str]:
    """The stream's messages on ``client``, or ``None`` and why the cross-check is
    skipped (``where``: the servers, or why there is no connection)."""
    from worker.audit.stream import read_stream

    if client is None:
        return None, f"not checked ({where})"
    try:
        bodies = await read_stream(client)
    except Exception as exc:  # e.g. a server without JetStream
        return None, f"not checked (reading {AUDIT_STREAM} failed: {type(exc).__name__})"
    if bodies is None:
        return None, f"not checked (no {AUDIT_STREAM} stream at {where})"
    return bodies, f"{AUDIT_STREAM} at {where}, {len(bodies)} record(s)"


async def verify_from_settings(settings: Settings, *, use_stream: bool = True,
                               since: str | None = None) -> VerifyReport:
    """What ``pqkms audit verify`` runs: the stream first (if asked and reachable), then
    the database named by ``settings``; ``since``: ``--since`` as given (a bad or future
    time raises :class:`InvalidSince` before anything is read)."""
    start = None if since is None else parse_since(since)
    if start is not None and start > datetime.now(UTC):
        raise InvalidSince(f"--since {canonical_time(start)} is in the future: "
                           "nothing would be judged")
    bodies, stream_status = None, "not checked (--no-stream)"
    if use_stream:
        async with audit_connection(settings) as (client, where):
            bodies, stream_status = await read_stream_bodies(client, where)
    log = AuditLog.connect(settings.resolved_database_url())
    try:
        report = await verify_audit_log(log, bodies, since=start)
    finally:
        await log.close()
    report.stream = stream_status
    return report
