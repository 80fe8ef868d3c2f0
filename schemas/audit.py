"""The audit contract: the ``PQKMS_AUDIT`` stream, its messages and one record's fields.

Every operation a worker serves leaves one audit record: who (tenant), what (operation
subject, algorithm, key version, items), which request (request id) and how it ended
(outcome code). Never any data: no plaintext, ciphertext, signature, key or API key.

Records form hash chains, one chain per worker process run (see ``docs/audit.md``). A
worker publishes the records of one group commit together: one message on
``pqkms.v1.audit.<chain_id>`` holds consecutive records of that chain as JSON Lines
(one :class:`AuditRecordMessage` object per line, in seq order), with
``Nats-Msg-Id: <chain_id>:<first seq>-<last seq>`` and ``Pqkms-Audit-Records: <count>``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.subjects import SUBJECT_PREFIX

__all__ = [
    "AUDIT_ARCHIVE_ANCHOR_OPERATION",
    "AUDIT_ARCHIVE_OPERATION",
    "AUDIT_STREAM",
    "AUDIT_SUBJECT_PREFIX",
    "HEADER_AUDIT_RECORDS",
    "AuditKind",
    "AuditRecordMessage",
    "audit_message_id",
    "audit_subject",
]

AUDIT_STREAM = "PQKMS_AUDIT"
# The operation of the record ``pqkms audit archive`` writes of each run (its own chain).
AUDIT_ARCHIVE_OPERATION = f"{SUBJECT_PREFIX}.audit.archive"
# ...and of each chain anchor the run attests (docs/audit.md, "Archiving").
AUDIT_ARCHIVE_ANCHOR_OPERATION = f"{SUBJECT_PREFIX}.audit.archive.anchor"
AUDIT_SUBJECT_PREFIX = f"{SUBJECT_PREFIX}.audit"
HEADER_AUDIT_RECORDS = "Pqkms-Audit-Records"


class AuditKind(StrEnum):
    """What a record stands for."""

    OPEN = "open"  # first record of a chain: a worker process started auditing
    REQUEST = "request"  # one request served by the envelope handler
    JOB_CHUNK = "job_chunk"  # one chunk of a durable job processed by the chunk runner
    CLOSE = "close"  # last record of a chain: the worker stopped cleanly


class AuditRecordMessage(BaseModel):
    """One audit record, as one line of a stream message (and one database row).

    ``record_hash`` = SHA-256(bytes of ``prev_hash`` ‖ canonical JSON of every other
    field); see ``docs/audit.md`` for the canonical form.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(ge=1)
    chain_id: str = Field(max_length=36)
    seq: int = Field(ge=1)
    kind: AuditKind
    worker_id: str = Field(max_length=255)
    recorded_at: str = Field(description="UTC, ISO 8601 with microseconds and a Z")
    operation: str | None = Field(default=None, max_length=128)
    request_id: str | None = Field(default=None, max_length=128)
    tenant_id: str | None = Field(default=None, max_length=36)
    algorithm: str | None = Field(default=None, max_length=64)
    key_version: int | None = None
    outcome: str | None = Field(default=None, max_length=32)
    items: int = Field(ge=0)
    duration_us: int = Field(ge=0)
    prev_hash: str = Field(min_length=64, max_length=64)
    record_hash: str = Field(min_length=64, max_length=64)


def audit_subject(chain_id: str) -> str:
    """The subject a chain's records are published on."""
    return f"{AUDIT_SUBJECT_PREFIX}.{chain_id}"


def audit_message_id(chain_id: str, first_seq: int, last_seq: int) -> str:
    """``Nats-Msg-Id`` of a message: JetStream drops a re-publish of the same records."""
    return f"{chain_id}:{first_seq}-{last_seq}"
