"""Stand-ins for the audit trail's collaborators."""

from __future__ import annotations

from collections.abc import Sequence

from worker.audit.entry import AuditEntry
from worker.audit.flush_metrics import FlushStage

__all__ = ["FakeStream", "RecordedFlushes"]


class FakeStream:
    """Stands in for AuditStream: records what was published, fails on demand."""

    def __init__(self) -> None:
        self.published: dict[tuple[str, int], bytes] = {}
        self.fail = False
        self.flushes: list[list[str]] = []  # the kinds of each publish call's records

    async def publish(self, entries: Sequence[AuditEntry]) -> list[BaseException | None]:
        self.flushes.append([entry.kind for entry in entries])
        if self.fail:
            return [ConnectionError("JetStream down") for _ in entries]
        for entry in entries:
            # A seq published again with other content would break the sink's promise.
            key = (entry.chain_id, entry.seq)
            assert self.published.setdefault(key, entry.to_message()) == entry.to_message()
        return [None] * len(entries)


class RecordedFlushes:
    """An AuditFlushMetrics that keeps every report."""

    def __init__(self) -> None:
        self.flushed: list[tuple[int, float, float]] = []
        self.failed: list[FlushStage] = []

    def audit_flushed(self, records: int, commit_seconds: float,
                      publish_seconds: float) -> None:
        self.flushed.append((records, commit_seconds, publish_seconds))

    def audit_flush_failed(self, stage: FlushStage) -> None:
        self.failed.append(stage)
