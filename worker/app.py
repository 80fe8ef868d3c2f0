"""Builds the worker: services on a store, routers on a NatsBroker. Lists every subject."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from faststream.nats import NatsBroker, NatsResponse
from faststream.nats.message import NatsMessage

from schemas.envelope import new_request_id, success_envelope
from schemas.subjects import Subject
from worker.audit.flush_metrics import NO_AUDIT_METRICS
from worker.audit.trail import AuditTrail
from worker.audit.wiring import audit_trail, job_chunk_sink, request_sink
from worker.bulk_config import BulkSettings, get_bulk_settings
from worker.config import Settings
from worker.handlers.batch import batch_router
from worker.handlers.direct import DirectResponder
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.jobs import jobs_router
from worker.handlers.kem import kem_router
from worker.handlers.keys import keys_router
from worker.handlers.rotation_policy import rotation_policy_router
from worker.handlers.routing import subscribe_message
from worker.handlers.signatures import signature_router
from worker.jobs import JobRunner, JobService, JobStreams
from worker.logging_setup import FASTSTREAM_LOGGER
from worker.metrics import NO_JOB_METRICS, WorkerMetrics, request_observer
from worker.nats_security import ConnectRefusalGuard, nats_security
from worker.readiness import ReadinessProbe
from worker.services.auth import Authenticator
from worker.services.batch import BatchService
from worker.services.crypto_runner import CryptoRunner
from worker.services.kem import KemService
from worker.services.key_access import KeyAccess
from worker.services.key_events import NatsKeyEventPublisher
from worker.services.keys import KeyLifecycleService
from worker.services.rate_limit import RateLimiter
from worker.services.rotation_scheduler import RotationScheduler
from worker.services.signatures import SignatureService
from worker.store.probe import probe_database

if TYPE_CHECKING:
    from worker.store import KeyStore

__all__ = [
    "GRACEFUL_STOP_SECONDS",
    "WorkerServices",
    "build_broker",
    "build_direct_responder",
    "build_job_runner",
    "build_rotation_scheduler",
    "build_services",
    "nats_servers",
]

# How long a stopping worker waits for the requests it has taken (FastStream's graceful
# timeout and worker/handlers/graceful_stop.py).
GRACEFUL_STOP_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class WorkerServices:
    """Everything a worker serves, wired together; no NATS inside."""

    handler: EnvelopeHandler
    keys: KeyLifecycleService
    kem: KemService
    signatures: SignatureService
    batch: BatchService
    runner: CryptoRunner
    authenticator: Authenticator
    rate_limiter: RateLimiter
    bulk: BulkSettings
    metrics: WorkerMetrics | None = None  # None: PQKMS_METRICS_PORT unset
    # Key events go out on the broker's connection, attached by build_broker.
    key_events: NatsKeyEventPublisher = field(default_factory=NatsKeyEventPublisher)
    # None: PQKMS_AUDIT=false. Its NATS connection is attached by build_broker.
    audit: AuditTrail | None = None
    # What the health ping reports beyond "this event loop runs"; None: only that.
    readiness: ReadinessProbe | None = None


def build_services(
    settings: Settings, store: KeyStore, rate_limiter: RateLimiter
) -> WorkerServices:
    """Wire services to a store and a rate limiter."""
    runner = CryptoRunner(settings.crypto_threads)
    access = KeyAccess(store)
    authenticator = Authenticator(store)
    metrics = WorkerMetrics() if settings.metrics_port is not None else None
    audit = audit_trail(settings, store.engine, upcoming=lambda: runner.submitted,
                        metrics=metrics or NO_AUDIT_METRICS)
    handler = EnvelopeHandler(authenticator, rate_limiter, settings, audit=request_sink(audit),
                              metrics=request_observer(metrics, settings.otel))
    bulk = get_bulk_settings()
    kem = KemService(access, runner, settings.max_message_bytes)
    signatures = SignatureService(access, runner, settings.max_message_bytes)
    key_events = NatsKeyEventPublisher()
    return WorkerServices(
        handler=handler,
        keys=KeyLifecycleService(store, access, settings, key_events),
        kem=kem,
        signatures=signatures,
        batch=BatchService(access, runner, settings.max_message_bytes,
                           bulk.batch_max_items, settings.nats_max_payload()),
        runner=runner,
        authenticator=authenticator,
        rate_limiter=rate_limiter,
        bulk=bulk,
        metrics=metrics,
        key_events=key_events,
        audit=audit,
        # A flush that has taken half a request's time makes requests time out.
        readiness=ReadinessProbe(lambda: probe_database(store.engine), audit,
                                 stalled_after=settings.request_timeout_seconds / 2),
    )


def nats_servers(settings: Settings) -> list[str]:
    """``PQKMS_NATS_URL`` may list several servers, comma-separated."""
    return [url.strip() for url in settings.nats_url.split(",") if url.strip()]


def build_direct_responder(settings: Settings, services: WorkerServices) -> DirectResponder | None:
    """The data plane's fast path (``PQKMS_DIRECT_DATA_PLANE``, on by default), or ``None``
    to serve every subject as a FastStream subscriber."""
    if not settings.direct_data_plane:
        return None
    return DirectResponder(
        services.handler, settings.direct_max_in_flight, GRACEFUL_STOP_SECONDS
    )


def build_broker(
    settings: Settings, services: WorkerServices, direct: DirectResponder | None = None,
    guard: ConnectRefusalGuard | None = None,
) -> NatsBroker:
    """A NatsBroker subscribed to every pqkms subject in one queue group; the data-plane
    subjects go to ``direct`` instead when given (start it on ``broker.connection``)."""
    # Refused credentials or TLS end the worker at start with a log line saying why
    # (FastStream would otherwise retry a TLS failure forever, unlogged).
    guard = guard or ConnectRefusalGuard("worker")
    broker = NatsBroker(
        nats_servers(settings),
        name=f"pqkms-worker-{socket.gethostname()}-{os.getpid()}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        security=nats_security(settings).faststream_security(),
        inbox_prefix=settings.nats_inbox_prefix,
        error_cb=guard.error_cb,
        disconnected_cb=guard.disconnected_cb,
        reconnected_cb=guard.reconnected_cb,
        graceful_timeout=GRACEFUL_STOP_SECONDS,
        log_level=10,  # FastStream's per-message lines at DEBUG; we log one line ourselves
        # Its lines in the worker's JSON form, not coloured text (worker.logging_setup).
        logger=logging.getLogger(FASTSTREAM_LOGGER),
    )
    broker.include_router(kem_router(services.handler, services.kem, direct))
    broker.include_router(signature_router(services.handler, services.signatures, direct))
    broker.include_router(keys_router(services.handler, services.keys))
    broker.include_router(rotation_policy_router(services.handler, services.keys))
    services.key_events.use_connection(lambda: broker.connection)
    if services.audit is not None:
        services.audit.use_connection(lambda: broker.connection)
    broker.include_router(batch_router(services.handler, services.batch, direct))
    streams = JobStreams(lambda: broker.connection, services.bulk)
    broker.include_router(jobs_router(services.handler, JobService(streams, services.batch)))
    worker_name = f"{socket.gethostname()}:{os.getpid()}"

    async def answer_health_ping(_: NatsMessage) -> NatsResponse:
        state = ({"status": "ok"} if services.readiness is None
                 else (await services.readiness.check()).as_reply())
        body = success_envelope({**state, "worker": worker_name}, new_request_id())
        return NatsResponse(orjson.dumps(body))

    subscribe_message(broker, Subject.HEALTH_PING, answer_health_ping, "health ping")

    return broker


def build_job_runner(settings: Settings, services: WorkerServices, broker: NatsBroker) -> JobRunner:
    """The chunk runner of durable jobs, on the broker's connection (start it after
    ``broker.start()``)."""
    return JobRunner(
        JobStreams(lambda: broker.connection, services.bulk),
        services.batch,
        services.authenticator,
        services.rate_limiter,
        settings,
        concurrency=services.bulk.job_concurrency,
        ack_wait=services.bulk.job_ack_wait_seconds,
        metrics=services.metrics or NO_JOB_METRICS,
        audit=job_chunk_sink(services.audit),
    )


def build_rotation_scheduler(
    settings: Settings, services: WorkerServices, store: KeyStore
) -> RotationScheduler:
    """The background scheduled rotation of this worker (``start()`` it once serving)."""
    from worker.store.rotation_policies import RotationPolicyStore

    return RotationScheduler(
        RotationPolicyStore(store.engine), services.keys, settings.rotation_check_seconds,
        audit=request_sink(services.audit),
    )
