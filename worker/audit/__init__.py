"""The audit trail: every operation as a record in a per-worker hash chain, stored in the
database and published to the ``PQKMS_AUDIT`` JetStream stream (``docs/audit.md``)."""

from worker.audit.entry import GENESIS_HASH, AuditEntry
from worker.audit.stream import AuditStream, StreamSettings
from worker.audit.trail import AuditTrail, AuditUnavailable

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditStream",
    "AuditTrail",
    "AuditUnavailable",
    "StreamSettings",
]
