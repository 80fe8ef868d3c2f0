"""The audit records of an archive run: what makes an archive anchor believable.

Each ``pqkms audit archive`` run writes, once its file is safely on disk and before it
deletes anything, a chain of its own to the database and to ``PQKMS_AUDIT``:

- an open record;
- the run: operation :data:`~schemas.audit.AUDIT_ARCHIVE_OPERATION`, ``items`` the
  records archived, ``request_id`` ``before=<cut-off> sha256=<the file's SHA-256>``;
- one anchor per chain with records in archive files, this run's or earlier ones':
  operation :data:`~schemas.audit.AUDIT_ARCHIVE_ANCHOR_OPERATION`, ``items`` the records
  this run archived of that chain, ``request_id`` ``<chain id> <seq> <hash>``: the
  chain's records 1..seq are in archive files, the last with that hash;
- a close record.

``request_id`` is the only free field of the record's published, frozen form. The
stream is append-only to the database's writers, so ``verify`` accepts a chain's anchor
only where an archive run attests it (in the stream, when the stream is checked):
deleting a chain's oldest records and moving its anchor by hand, as if archived, is
found. Since every run attests every anchor, the latest run's records (the last to
expire from the stream, and never archived by their own run) vouch for all of them.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from schemas.audit import (
    AUDIT_ARCHIVE_ANCHOR_OPERATION,
    AUDIT_ARCHIVE_OPERATION,
    AUDIT_STREAM,
    AuditKind,
)
from worker.audit.entry import GENESIS_HASH, AuditEntry, canonical_time
from worker.services.request_record import RequestRecord
from worker.store.audit_log import AuditLog

__all__ = ["ArchiveAnchor", "ArchiveNotAttested", "ArchiveRun", "RecordPublisher",
           "anchor_of", "attest_archive", "run_of"]

_RUN = re.compile(r"before=(?P<before>\S+) sha256=(?P<sha256>[0-9a-f]{64})")
_ANCHOR = re.compile(r"(?P<chain>\S{1,36}) (?P<seq>[1-9][0-9]{0,18}) (?P<hash>[0-9a-f]{64})")


class RecordPublisher(Protocol):
    """What publishes records to ``PQKMS_AUDIT`` (``worker.audit.stream.AuditStream``)."""

    async def publish(self, entries: Sequence[AuditEntry]) -> list[BaseException | None]:
        """Per entry ``None`` once stored, else the error."""
        ...


class ArchiveNotAttested(RuntimeError):
    """The archive's own records could not be written: nothing was deleted."""


@dataclass(frozen=True, slots=True)
class ArchiveRun:
    """An archive run, as its record tells it."""

    chain_id: str
    recorded_before: datetime
    sha256: str
    records: int
    recorded_at: datetime  # when the run recorded itself


@dataclass(frozen=True, slots=True)
class ArchiveAnchor:
    """A chain's records 1..seq are in archive files; the last one's hash. ``recorded_at``:
    when the run that attests it recorded it."""

    chain_id: str
    seq: int
    record_hash: str
    recorded_at: datetime


def _matched(entry: AuditEntry, operation: str, form: re.Pattern[str]) -> re.Match[str] | None:
    """``entry``'s ``request_id`` read by ``form`` if it records ``operation``, done."""
    if entry.operation != operation or entry.outcome != "OK" or entry.request_id is None:
        return None
    return form.fullmatch(entry.request_id)


def run_of(entry: AuditEntry) -> ArchiveRun | None:
    """The archive run ``entry`` records, or ``None`` when it records something else."""
    match = _matched(entry, AUDIT_ARCHIVE_OPERATION, _RUN)
    if match is None:
        return None
    try:
        before = datetime.fromisoformat(match["before"])
    except ValueError:
        return None
    if before.tzinfo is None or before > entry.recorded_at:
        return None  # a run never archives what was not yet recorded
    return ArchiveRun(entry.chain_id, before.astimezone(UTC), match["sha256"], entry.items,
                      entry.recorded_at)


def anchor_of(entry: AuditEntry) -> ArchiveAnchor | None:
    """The anchor ``entry`` attests, or ``None`` when it records something else."""
    match = _matched(entry, AUDIT_ARCHIVE_ANCHOR_OPERATION, _ANCHOR)
    if match is None:
        return None
    return ArchiveAnchor(match["chain"], int(match["seq"]), match["hash"], entry.recorded_at)


def _record(operation: str, request_id: str, items: int, seconds: float) -> RequestRecord:
    return RequestRecord(operation=operation, request_id=request_id, tenant_id=None,
                         algorithm=None, key_version=None, outcome="OK",
                         duration_seconds=seconds, items=items)


def _entries(before: datetime, sha256: str, records: int, seconds: float,
             anchors: Iterable[tuple[str, int, str, int]]) -> list[AuditEntry]:
    chain_id, worker_id = str(uuid.uuid4()), f"{socket.gethostname()}:{os.getpid()}"
    requests = [_record(AUDIT_ARCHIVE_OPERATION,
                        f"before={canonical_time(before)} sha256={sha256}", records, seconds)]
    requests += [_record(AUDIT_ARCHIVE_ANCHOR_OPERATION, f"{chain} {seq} {digest}", items, 0.0)
                 for chain, seq, digest, items in anchors]
    kinds: list[tuple[AuditKind, RequestRecord | None]] = [
        (AuditKind.OPEN, None), *((AuditKind.REQUEST, request) for request in requests),
        (AuditKind.CLOSE, None)]
    entries: list[AuditEntry] = []
    recorded_at = datetime.now(UTC)
    for seq, (kind, request) in enumerate(kinds, start=1):
        entries.append(AuditEntry.seal(
            chain_id=chain_id, seq=seq, kind=kind, worker_id=worker_id,
            recorded_at=recorded_at, prev_hash=entries[-1].record_hash if entries
            else GENESIS_HASH, record=request))
    return entries


async def attest_archive(log: AuditLog, stream: RecordPublisher, before: datetime, sha256: str,
                         records: int, seconds: float,
                         anchors: Iterable[tuple[str, int, str, int]]) -> None:
    """Write the run's chain to the database, then to the stream (as workers do: what
    the stream holds, the database holds). ``anchors``: ``(chain id, seq, hash, records
    archived by this run)`` of every chain that will have archived records.
    :class:`ArchiveNotAttested` if either write fails."""
    entries = _entries(before, sha256, records, seconds, anchors)
    try:
        await log.append(entries)
    except Exception as exc:
        raise ArchiveNotAttested(f"the archive's own audit records could not be stored "
                                 f"({type(exc).__name__})") from None
    errors = [error for error in await stream.publish(entries) if error is not None]
    if errors:
        raise ArchiveNotAttested(
            f"the archive's own audit records did not reach the {AUDIT_STREAM} stream "
            f"({type(errors[0]).__name__})")
