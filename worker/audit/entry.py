"""One audit record and its hash: the canonical form every chain check relies on.

``record_hash`` = SHA-256(the 32 bytes of ``prev_hash`` ‖ canonical JSON), where the
canonical JSON holds every field except the two hashes: keys sorted, no whitespace,
UTF-8, integers as integers, ``null`` for missing values, ``recorded_at`` as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``. The first record of a chain links to
:data:`GENESIS_HASH`. The chain id and the sequence number are inside the hashed
fields, so a record cannot be moved to another place or another chain unnoticed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.audit import AuditKind, AuditRecordMessage
from worker.services.request_record import RequestRecord

__all__ = [
    "AUDIT_RECORD_VERSION",
    "GENESIS_HASH",
    "AuditEntry",
    "canonical_time",
    "record_hash",
]

AUDIT_RECORD_VERSION = 1
GENESIS_HASH = "0" * 64


# The text of the last second formatted, by (year, month, day, hour, minute, second):
# a record's time is formatted once per record, and most records share their second.
_second_text: tuple[tuple[int, ...], str] = ((), "")


def canonical_time(moment: datetime) -> str:
    """``moment`` in UTC with microseconds and a ``Z``: one spelling per instant."""
    global _second_text
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None:
            raise ValueError("naive datetime in an audit record")
        moment = moment.astimezone(UTC)
    second = (moment.year, moment.month, moment.day, moment.hour, moment.minute,
              moment.second)
    cached, text = _second_text
    if second != cached:
        text = moment.replace(microsecond=0, tzinfo=None).isoformat()
        _second_text = (second, text)
    return f"{text}.{moment.microsecond:06d}Z"


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """The hash that links a record to its predecessor (see the module docstring)."""
    return _digest(prev_hash, _canonical(fields))


def _canonical(fields: dict[str, Any]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def _digest(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


# Not frozen: a frozen dataclass's __init__ costs ≈ 2 µs more per record (each field
# set through object.__setattr__). Entries are never changed once made.
@dataclass(slots=True)
class AuditEntry:
    """One record of a chain, as stored in ``pqkms_audit_record`` and on the stream."""

    chain_id: str
    seq: int
    kind: str  # an AuditKind value; a plain str so a tampered row can still be reported
    worker_id: str
    recorded_at: datetime
    operation: str | None
    request_id: str | None
    tenant_id: str | None
    algorithm: str | None
    key_version: int | None
    outcome: str | None
    items: int
    duration_us: int
    prev_hash: str
    record_hash: str
    schema_version: int = AUDIT_RECORD_VERSION
    # Kept by seal(), which has just computed them: the stream line and the canonical
    # time (entries read back from storage compute them again when asked).
    message: bytes | None = field(default=None, compare=False, repr=False)
    recorded_text: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def seal(
        cls,
        *,
        chain_id: str,
        seq: int,
        kind: AuditKind,
        worker_id: str,
        recorded_at: datetime,
        prev_hash: str,
        record: RequestRecord | None = None,
    ) -> AuditEntry:
        """A new entry after ``prev_hash``, its hash computed; ``record`` is ``None``
        for the open and close records of a chain."""
        operation = request_id = tenant_id = algorithm = outcome = None
        key_version: int | None = None
        items = duration_us = 0
        if record is not None:
            # Clipped to the column sizes: an over-long value must not make the insert,
            # and with it the request, fail (the envelope already bounds request ids).
            operation, request_id = record.operation[:128], record.request_id[:128]
            tenant_id = None if record.tenant_id is None else record.tenant_id[:36]
            algorithm = None if record.algorithm is None else str(record.algorithm)[:64]
            key_version, outcome, items = record.key_version, record.outcome[:32], record.items
            duration_us = max(0, round(record.duration_seconds * 1_000_000))
        recorded_text = canonical_time(recorded_at)
        fields = _fields(
            chain_id, seq, kind, worker_id, recorded_text, operation, request_id, tenant_id,
            algorithm, key_version, outcome, items, duration_us, AUDIT_RECORD_VERSION,
        )
        canonical = _canonical(fields)
        digest = _digest(prev_hash, canonical)
        return cls(
            chain_id, seq, kind.value, worker_id, recorded_at, operation, request_id,
            tenant_id, algorithm, key_version, outcome, items, duration_us, prev_hash,
            digest, AUDIT_RECORD_VERSION, _message(fields, prev_hash, digest),
            recorded_text,
        )

    def hashed_fields(self) -> dict[str, Any]:
        """The hashed fields as JSON values (the input of the canonical JSON)."""
        return _hashed_fields(
            self.chain_id, self.seq, self.kind, self.worker_id, self.recorded_at,
            self.operation, self.request_id, self.tenant_id, self.algorithm,
            self.key_version, self.outcome, self.items, self.duration_us, self.schema_version,
        )

    def computed_hash(self) -> str:
        """The hash this entry's content and ``prev_hash`` call for."""
        return record_hash(self.prev_hash, self.hashed_fields())

    def to_message(self) -> bytes:
        """The record as one JSON object: every field, both hashes included (one line of
        a stream message)."""
        if self.message is not None:
            return self.message
        return _message(self.hashed_fields(), self.prev_hash, self.record_hash)

    @classmethod
    def from_message(cls, data: bytes) -> AuditEntry:
        """Parse one record's JSON (raises ``ValueError`` on anything malformed)."""
        message = AuditRecordMessage.model_validate_json(data)
        recorded_at = datetime.fromisoformat(message.recorded_at)
        if canonical_time(recorded_at) != message.recorded_at:
            raise ValueError("recorded_at is not in the canonical form")
        return cls(
            chain_id=message.chain_id,
            seq=message.seq,
            kind=message.kind.value,
            worker_id=message.worker_id,
            recorded_at=recorded_at,
            operation=message.operation,
            request_id=message.request_id,
            tenant_id=message.tenant_id,
            algorithm=message.algorithm,
            key_version=message.key_version,
            outcome=message.outcome,
            items=message.items,
            duration_us=message.duration_us,
            prev_hash=message.prev_hash,
            record_hash=message.record_hash,
            schema_version=message.schema_version,
        )


def _message(fields: dict[str, Any], prev_hash: str, digest: str) -> bytes:
    return orjson.dumps({**fields, "prev_hash": prev_hash, "record_hash": digest})


def _hashed_fields(
    chain_id: str, seq: int, kind: str, worker_id: str, recorded_at: datetime,
    operation: str | None, request_id: str | None, tenant_id: str | None,
    algorithm: str | None, key_version: int | None, outcome: str | None, items: int,
    duration_us: int, schema_version: int,
) -> dict[str, Any]:
    return _fields(chain_id, seq, kind, worker_id, canonical_time(recorded_at), operation,
                   request_id, tenant_id, algorithm, key_version, outcome, items,
                   duration_us, schema_version)


def _fields(
    chain_id: str, seq: int, kind: str, worker_id: str, recorded_text: str,
    operation: str | None, request_id: str | None, tenant_id: str | None,
    algorithm: str | None, key_version: int | None, outcome: str | None, items: int,
    duration_us: int, schema_version: int,
) -> dict[str, Any]:
    # The one list of hashed fields: what seal() hashes is what verification recomputes.
    return {
        "chain_id": chain_id, "seq": seq, "kind": str(kind),
        "worker_id": worker_id, "recorded_at": recorded_text,
        "operation": operation, "request_id": request_id, "tenant_id": tenant_id,
        "algorithm": algorithm, "key_version": key_version, "outcome": outcome,
        "items": items, "duration_us": duration_us, "schema_version": schema_version,
    }
