"""What the audit trail reports about each group commit (Prometheus, ``worker.metrics``).

One call per flush, never per request: how many records it held, how long the database
transaction took and how long JetStream took to ack them. These show an operator what
the audit costs a request (its wait is about one commit plus one ack) and when the
database is the bottleneck (commits that wait for another process's write lock).
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["NO_AUDIT_METRICS", "AuditFlushMetrics", "FlushStage"]

FlushStage = Literal["database", "stream"]


class AuditFlushMetrics(Protocol):
    """Receives one report per audit flush."""

    def audit_flushed(self, records: int, commit_seconds: float,
                      publish_seconds: float) -> None:
        """A flush of ``records`` records was committed and acked."""

    def audit_flush_failed(self, stage: FlushStage) -> None:
        """A flush failed at ``stage``: its requests were answered 503."""


class _NoAuditMetrics:
    def audit_flushed(self, records: int, commit_seconds: float,
                      publish_seconds: float) -> None:
        return None

    def audit_flush_failed(self, stage: FlushStage) -> None:
        return None


NO_AUDIT_METRICS: AuditFlushMetrics = _NoAuditMetrics()
