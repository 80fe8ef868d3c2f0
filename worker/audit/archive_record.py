"""The audit record of an archive run: what makes an archive anchor believable.

Each ``pqkms audit archive`` run writes, before it deletes anything, a chain of its own
(open, one record, close) to the database and to ``PQKMS_AUDIT``: operation
:data:`~schemas.audit.AUDIT_ARCHIVE_OPERATION`, ``items`` the records archived, and in
``request_id`` the cut-off and the file's SHA-256 (``before=<time> sha256=<hex>``, the
record having no other free field). The stream is append-only to the database's
writers, so ``verify`` accepts a chain's anchor only where the stream attests an
archive whose cut-off lies after the anchor record: deleting old records and moving
the anchor by hand, as if archived, is found.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from schemas.audit import AUDIT_ARCHIVE_OPERATION, AUDIT_STREAM, AuditKind
from worker.audit.entry import GENESIS_HASH, AuditEntry, canonical_time
from worker.services.request_record import RequestRecord
from worker.store.audit_log import AuditLog

__all__ = ["ArchiveAttestation", "ArchiveNotAttested", "RecordPublisher", "attest_archive",
           "attestation_of"]

_REQUEST_ID = re.compile(r"before=(?P<before>\S+) sha256=(?P<sha256>[0-9a-f]{64})")


class RecordPublisher(Protocol):
    """What publishes records to ``PQKMS_AUDIT`` (``worker.audit.stream.AuditStream``)."""

    async def publish(self, entries: Sequence[AuditEntry]) -> list[BaseException | None]:
        """Per entry ``None`` once stored, else the error."""
        ...


class ArchiveNotAttested(RuntimeError):
    """The archive's own record could not be written: nothing was deleted."""


@dataclass(frozen=True, slots=True)
class ArchiveAttestation:
    """An archive run, as its record tells it."""

    chain_id: str
    seq: int
    recorded_before: datetime
    sha256: str
    records: int


def attestation_of(entry: AuditEntry) -> ArchiveAttestation | None:
    """The archive run ``entry`` records, or ``None`` when it records something else."""
    if entry.operation != AUDIT_ARCHIVE_OPERATION or entry.outcome != "OK" \
            or entry.request_id is None:
        return None
    match = _REQUEST_ID.fullmatch(entry.request_id)
    if match is None:
        return None
    try:
        before = datetime.fromisoformat(match["before"])
    except ValueError:
        return None
    if before.tzinfo is None or before > entry.recorded_at:
        return None  # a run never archives what was not yet recorded
    return ArchiveAttestation(entry.chain_id, entry.seq, before.astimezone(UTC),
                              match["sha256"], entry.items)


def _entries(before: datetime, sha256: str, records: int, seconds: float) -> list[AuditEntry]:
    chain_id, worker_id = str(uuid.uuid4()), f"{socket.gethostname()}:{os.getpid()}"
    record = RequestRecord(
        operation=AUDIT_ARCHIVE_OPERATION,
        request_id=f"before={canonical_time(before)} sha256={sha256}", tenant_id=None,
        algorithm=None, key_version=None, outcome="OK", duration_seconds=seconds,
        items=records)
    entries: list[AuditEntry] = []
    for seq, (kind, request) in enumerate(((AuditKind.OPEN, None),
                                           (AuditKind.REQUEST, record),
                                           (AuditKind.CLOSE, None)), start=1):
        entries.append(AuditEntry.seal(
            chain_id=chain_id, seq=seq, kind=kind, worker_id=worker_id,
            recorded_at=datetime.now(UTC), prev_hash=entries[-1].record_hash if entries
            else GENESIS_HASH, record=request))
    return entries


async def attest_archive(log: AuditLog, stream: RecordPublisher, before: datetime, sha256: str,
                         records: int, seconds: float) -> ArchiveAttestation:
    """Write the run's chain to the database, then to the stream (as workers do: what
    the stream holds, the database holds); :class:`ArchiveNotAttested` if either fails."""
    entries = _entries(before, sha256, records, seconds)
    try:
        await log.append(entries)
    except Exception as exc:
        raise ArchiveNotAttested(f"the archive's own audit record could not be stored "
                                 f"({type(exc).__name__}); nothing was deleted") from None
    errors = [error for error in await stream.publish(entries) if error is not None]
    if errors:
        raise ArchiveNotAttested(
            f"the archive's own audit record did not reach the {AUDIT_STREAM} stream "
            f"({type(errors[0]).__name__}); nothing was deleted: the records are in the file "
            "and still in the database")
    attestation = attestation_of(entries[1])
    assert attestation is not None
    return attestation
