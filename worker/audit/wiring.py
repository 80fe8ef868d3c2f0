"""How a worker builds, connects and stops its audit trail (used by ``worker.app`` and
``worker.main``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.audit import AuditKind
from worker.audit.flush_metrics import NO_AUDIT_METRICS, AuditFlushMetrics
from worker.audit.stream import AuditStream, StreamSettings
from worker.audit.trail import AuditTrail
from worker.config import Settings
from worker.services.request_record import NO_AUDIT, AuditSink
from worker.store.audit_log import AuditLog

__all__ = ["audit_trail", "finish_subscribers", "job_chunk_sink", "request_sink"]


def audit_trail(settings: Settings, engine: AsyncEngine,
                upcoming: Callable[[], int] | None = None,
                metrics: AuditFlushMetrics = NO_AUDIT_METRICS) -> AuditTrail | None:
    """The worker's audit trail on the key store's engine, or ``None`` with
    ``PQKMS_AUDIT=false``. Attach the NATS connection with ``use_connection``.
    ``upcoming``: requests whose records are due soon (the crypto pool's calls);
    ``metrics``: where each group commit is reported."""
    if not settings.audit:
        return None
    stream = AuditStream(StreamSettings(
        replicas=settings.audit_stream_replicas or settings.jetstream_replicas,
        max_age_days=settings.audit_stream_max_age_days,
    ))
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    return AuditTrail(AuditLog(engine, fsync=settings.audit_fsync), stream, worker_id,
                      linger_seconds=settings.audit_linger_ms / 1000,
                      upcoming=upcoming, metrics=metrics)


def request_sink(trail: AuditTrail | None) -> AuditSink:
    """What the envelope handler appends to."""
    return NO_AUDIT if trail is None else trail


def job_chunk_sink(trail: AuditTrail | None) -> AuditSink:
    """What the job runner appends to: one ``job_chunk`` record per processed chunk."""
    return NO_AUDIT if trail is None else trail.sink(AuditKind.JOB_CHUNK)


async def finish_subscribers(broker: NatsBroker) -> None:
    """Stop the broker's subscribers and let their requests in flight finish, while the
    connection stays open: those requests' audit records and the chain's close record
    still need it. ``broker.stop()`` afterwards finds them stopped."""
    for subscriber in broker.subscribers:
        await subscriber.stop()
