"""``pqkms audit archive``: move the records of a past period out of the database into a
file, after checking the log, so that every chain still verifies from its new anchor.

What is archived: per chain, the records after its anchor (``archived_seq``) that were
recorded before the cut-off, in seq order up to the first that was not, or up to a gap.
An open chain keeps its last record: its worker may be running, and on an unknown
commit it reads that record back (``AuditLog.last_record``). A closed chain recorded
wholly before the cut-off is archived whole and keeps its ``pqkms_audit_chain`` row.

The order makes an interruption harmless: the log is verified (against the stream,
which is required); the records are written to ``FILE.partial``, their links checked
again on the way, and the file is synced; the run writes its own audit record to the
database and the stream (cut-off, count, the file's SHA-256:
:mod:`worker.audit.archive_record`); the file takes its name; then each chain's records
are deleted in steps of :data:`ARCHIVE_STEP`, each step moving the chain's anchor in the
same transaction. Stopped anywhere, the database still verifies, and records it still
holds are in the file as well (if it got its name).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from schemas.audit import AUDIT_STREAM
from worker.audit.archive_file import ArchiveWriter
from worker.audit.archive_record import ArchiveNotAttested, RecordPublisher, attest_archive
from worker.audit.entry import GENESIS_HASH, AuditEntry, canonical_time
from worker.audit.stream import AuditStream
from worker.audit.verify import (
    CREATION_GRACE,
    InvalidSince,
    VerifyReport,
    audit_connection,
    parse_since,
    read_stream_bodies,
    verify_audit_log,
)
from worker.config import Settings
from worker.store.audit_archive_rows import ArchiveStep, drop_archived
from worker.store.audit_log import AuditLog, ChainHead

__all__ = ["ARCHIVE_STEP", "ArchiveNeedsStream", "ArchiveOutcome", "ArchiveRefused",
           "archive_audit_log", "archive_from_settings"]

# Records deleted per transaction: short enough that workers' group commits on SQLite
# wait milliseconds for the write lock, not seconds.
ARCHIVE_STEP = 5000


class ArchiveRefused(RuntimeError):
    """The records to archive changed between the check and the copy."""


class ArchiveNeedsStream(RuntimeError):
    """NATS or the ``PQKMS_AUDIT`` stream cannot be reached: nothing is archived."""


@dataclass(slots=True)
class _ChainCut:
    """What this run archives of one chain."""

    chain_id: str
    anchor: int
    closed_at_seq: int | None
    expected_seq: int
    prev_hash: str
    steps: list[ArchiveStep] = field(default_factory=list)
    records: int = 0
    held: AuditEntry | None = None
    stopped: bool = False
    last: ArchiveStep | None = None

    @classmethod
    def after(cls, head: ChainHead) -> _ChainCut:
        return cls(head.chain_id, head.archived_seq, head.last_seq, head.archived_seq + 1,
                   head.archived_hash or GENESIS_HASH)


@dataclass(slots=True)
class ArchiveOutcome:
    """What ``pqkms audit archive`` did (nothing when the check failed or no record was
    old enough)."""

    check: VerifyReport
    recorded_before: datetime
    path: Path | None = None
    sha256: str | None = None
    records: int = 0
    chains: int = 0
    whole_chains: int = 0
    deleted: int = 0

    @property
    def archived(self) -> bool:
        """Whether records were moved to a file."""
        return self.path is not None

    def lines(self) -> list[str]:
        """The report: the check's findings when it failed, then one summary line."""
        before = canonical_time(self.recorded_before)
        if not self.check.intact:
            return [*self.check.lines(),
                    "nothing archived: the audit log is not intact (archiving would move the "
                    "evidence out of verify's sight; examine the findings first)"]
        if self.path is None:
            return [f"nothing archived: no record recorded before {before} can leave the "
                    "database (an open chain keeps its last record)"]
        return [f"archived {self.records} record(s) of {self.chains} chain(s) "
                f"({self.whole_chains} whole) recorded before {before} to {self.path} "
                f"(sha256 {self.sha256}); {self.deleted} deleted from the database"]


class _Selection:
    """Walks the records in chain and seq order and writes those to archive."""

    def __init__(self, heads: Mapping[str, ChainHead], before: datetime,
                 writer: ArchiveWriter) -> None:
        self._heads = heads
        self._before = before
        self._writer = writer
        self.cuts: list[_ChainCut] = []
        self._cut: _ChainCut | None = None
        self._chain_id: str | None = None

    def add(self, entry: AuditEntry) -> None:
        if entry.chain_id != self._chain_id:
            self.finish()
            self._chain_id = entry.chain_id
            head = self._heads.get(entry.chain_id)
            self._cut = None if head is None else _ChainCut.after(head)
        cut = self._cut
        if cut is None or cut.stopped:
            return
        if cut.held is not None:  # not the chain's last record: it may go
            self._take(cut, cut.held)
            cut.held = None
        if entry.seq != cut.expected_seq or entry.recorded_at >= self._before:
            cut.stopped = True  # a gap, or the period ends here
            return
        if entry.prev_hash != cut.prev_hash or entry.computed_hash() != entry.record_hash:
            raise ArchiveRefused(
                f"chain {entry.chain_id} seq {entry.seq} changed after the check (its hash "
                "or link does not match); nothing was archived: run `pqkms audit verify`")
        cut.held = entry
        cut.expected_seq = entry.seq + 1
        cut.prev_hash = entry.record_hash

    def finish(self) -> None:
        """The end of the current chain: its last record goes only if the chain closed
        there."""
        cut, self._cut = self._cut, None
        if cut is None:
            return
        if cut.held is not None and cut.closed_at_seq == cut.held.seq:
            self._take(cut, cut.held)
        if cut.last is not None:
            if not cut.steps or cut.steps[-1] != cut.last:
                cut.steps.append(cut.last)
            self.cuts.append(cut)

    def _take(self, cut: _ChainCut, entry: AuditEntry) -> None:
        self._writer.write(entry)
        cut.records += 1
        cut.last = ArchiveStep(entry.seq, entry.record_hash)
        if cut.records % ARCHIVE_STEP == 0:
            cut.steps.append(cut.last)


async def _select(entries: AsyncIterator[AuditEntry], heads: Mapping[str, ChainHead],
                  before: datetime, writer: ArchiveWriter) -> list[_ChainCut]:
    selection = _Selection(heads, before, writer)
    async for entry in entries:
        selection.add(entry)
    selection.finish()
    return selection.cuts


async def _anchor_table(log: AuditLog) -> dict[str, tuple[int, str | None]]:
    async with log.snapshot() as snapshot:
        return {head.chain_id: (head.archived_seq, head.archived_hash)
                for head in await snapshot.chains()}


def _refuse_moved_anchors(checked: Mapping[str, tuple[int, str | None]],
                          heads: Mapping[str, ChainHead]) -> None:
    """The anchors this run attests must be those the check judged (read before it, so
    that a change during the check is either judged or seen here)."""
    for chain_id, head in heads.items():
        if (head.archived_seq, head.archived_hash) != checked.get(chain_id, (0, None)):
            raise ArchiveRefused(
                f"chain {chain_id}: its archive anchor moved while the log was checked "
                "(another archive ran, or the database was written by hand); nothing was "
                "archived: run `pqkms audit verify`, then the archive again")


def _anchors(heads: Mapping[str, ChainHead],
             cuts: list[_ChainCut]) -> list[tuple[str, int, str, int]]:
    """Every chain's anchor once this run is done: ``(chain, seq, hash, records moved by
    this run)``, chains this run leaves alone included."""
    moved = {cut.chain_id: cut for cut in cuts}
    anchors = []
    for chain_id, head in sorted(heads.items()):
        cut = moved.get(chain_id)
        if cut is not None and cut.last is not None:
            anchors.append((chain_id, cut.last.seq, cut.last.record_hash, cut.records))
        elif head.archived_seq and head.archived_hash is not None:
            anchors.append((chain_id, head.archived_seq, head.archived_hash, 0))
    return anchors


async def archive_audit_log(log: AuditLog, stream: RecordPublisher, out: Path,
                            before: datetime, stream_bodies: list[bytes], *,
                            since: datetime | None = None,
                            now: datetime | None = None) -> ArchiveOutcome:
    """Verify ``log`` against ``stream_bodies`` (the stream's messages, read first;
    ``since`` as for ``verify``), then move the records recorded before ``before`` to
    the file ``out``, attested on ``stream`` (see the module docstring). Nothing is
    written when the check finds an error."""
    started = time.monotonic()
    moment = now or datetime.now(UTC)
    writer = ArchiveWriter(out)  # (refuses a taken name before the long check)
    try:
        checked = await _anchor_table(log)
        check = await verify_audit_log(log, stream_bodies, since=since, now=moment)
        outcome = ArchiveOutcome(check, before)
        if not check.intact:
            writer.discard()
            return outcome
        async with log.snapshot() as snapshot:
            heads = {head.chain_id: head for head in await snapshot.chains()}
            _refuse_moved_anchors(checked, heads)
            cuts = await _select(snapshot.entries(), heads, before, writer)
        if not cuts:
            writer.discard()
            return outcome
        sha256 = writer.finish()
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    # The file is on disk under its name before the run is attested: an attested anchor
    # always has its records in a file.
    try:
        await attest_archive(log, stream, before, sha256, writer.records,
                             time.monotonic() - started, _anchors(heads, cuts))
    except ArchiveNotAttested as exc:
        raise ArchiveNotAttested(
            f"{exc}; nothing was deleted: {out} holds the records, which are still in the "
            "database; keep the file (the stream may have stored the run even so, an ack "
            "lost), and run the archive again with another --out"
        ) from None
    outcome.path, outcome.sha256 = out, sha256
    outcome.records, outcome.chains = writer.records, len(cuts)
    outcome.whole_chains = sum(cut.last is not None and cut.last.seq == cut.closed_at_seq
                               for cut in cuts)
    for cut in cuts:
        outcome.deleted += await drop_archived(log.engine, cut.chain_id, cut.anchor,
                                               cut.steps)
    return outcome


async def archive_from_settings(settings: Settings, out: Path, before: str, *,
                                since: str | None = None,
                                now: datetime | None = None) -> ArchiveOutcome:
    """What ``pqkms audit archive`` runs: ``before`` and ``since`` as given (a bad or
    future time raises :class:`InvalidSince` before anything is read). The stream is
    required: it holds the run's own record (:class:`ArchiveNeedsStream` without it).
    ``now``: the time the cut-off and key versions are judged at (tests)."""
    now = now or datetime.now(UTC)
    cutoff = parse_since(before, option="--before")
    start = None if since is None else parse_since(since)
    if start is not None and start > now:
        raise InvalidSince(f"--since {canonical_time(start)} is in the future")
    if cutoff > now - CREATION_GRACE:
        # Key versions younger than the grace are not yet judged against their creation
        # records; after the archive they never would be.
        raise InvalidSince(f"--before {canonical_time(cutoff)} is in the future or less than "
                           f"{CREATION_GRACE.seconds} s ago")
    async with audit_connection(settings) as (client, where):
        bodies, stream_status = await read_stream_bodies(client, where)
        if client is None or bodies is None:
            raise ArchiveNeedsStream(
                f"the archive needs the {AUDIT_STREAM} stream, where its own records go "
                f"and against which the log is verified first: stream {stream_status}; "
                "under pqkms up, run it with the workers' NATS rights (docs/audit.md, "
                "'Archiving')")
        stream = AuditStream(connection=lambda: client, manage_stream=False)
        log = AuditLog.connect(settings.resolved_database_url())
        try:
            outcome = await archive_audit_log(log, stream, out, cutoff, bodies, since=start,
                                              now=now)
        finally:
            await log.close()
    outcome.check.stream = stream_status
    return outcome
