"""Builds the worker: services on a store, routers on a NatsBroker. Lists every subject."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from faststream.nats import NatsBroker, NatsResponse
from faststream.security import SASLPlaintext

from schemas.envelope import new_request_id, success_envelope
from schemas.subjects import QUEUE_GROUP, Subject
from worker.bulk_config import BulkSettings, get_bulk_settings
from worker.config import Settings
from worker.handlers.batch import batch_router
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.jobs import jobs_router
from worker.handlers.kem import kem_router
from worker.handlers.keys import keys_router
from worker.handlers.signatures import signature_router
from worker.jobs import JobRunner, JobService, JobStreams
from worker.services.auth import Authenticator
from worker.services.batch import BatchService
from worker.services.crypto_runner import CryptoRunner
from worker.services.kem import KemService
from worker.services.key_access import KeyAccess
from worker.services.keys import KeyLifecycleService
from worker.services.rate_limit import RateLimiter
from worker.services.signatures import SignatureService

if TYPE_CHECKING:
    from worker.store import KeyStore

__all__ = [
    "WorkerServices",
    "build_broker",
    "build_job_runner",
    "build_services",
    "nats_servers",
]


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


def build_services(
    settings: Settings, store: KeyStore, rate_limiter: RateLimiter
) -> WorkerServices:
    """Wire services to a store and a rate limiter."""
    runner = CryptoRunner(settings.crypto_threads)
    access = KeyAccess(store)
    authenticator = Authenticator(store)
    handler = EnvelopeHandler(authenticator, rate_limiter, settings)
    bulk = get_bulk_settings()
    kem = KemService(access, runner, settings.max_message_bytes)
    signatures = SignatureService(access, runner, settings.max_message_bytes)
    return WorkerServices(
        handler=handler,
        keys=KeyLifecycleService(store, access, settings),
        kem=kem,
        signatures=signatures,
        batch=BatchService(access, runner, settings.max_message_bytes,
                           bulk.batch_max_items, settings.nats_max_payload()),
        runner=runner,
        authenticator=authenticator,
        rate_limiter=rate_limiter,
        bulk=bulk,
    )


def nats_servers(settings: Settings) -> list[str]:
    """``PQKMS_NATS_URL`` may list several servers, comma-separated."""
    return [url.strip() for url in settings.nats_url.split(",") if url.strip()]


def build_broker(settings: Settings, services: WorkerServices) -> NatsBroker:
    """A NatsBroker subscribed to every pqkms subject in one queue group."""
    security = None
    if settings.nats_user:
        password = settings.nats_password.get_secret_value() if settings.nats_password else ""
        security = SASLPlaintext(username=settings.nats_user, password=password)
    broker = NatsBroker(
        nats_servers(settings),
        name=f"pqkms-worker-{socket.gethostname()}-{os.getpid()}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        security=security,
        graceful_timeout=15.0,
        log_level=10,  # FastStream's per-message lines at DEBUG; we log one line ourselves
    )
    broker.include_router(kem_router(services.handler, services.kem))
    broker.include_router(signature_router(services.handler, services.signatures))
    broker.include_router(keys_router(services.handler, services.keys))
    broker.include_router(batch_router(services.handler, services.batch))
    streams = JobStreams(lambda: broker.connection, services.bulk)
    broker.include_router(jobs_router(services.handler, JobService(streams, services.batch)))
    worker_name = f"{socket.gethostname()}:{os.getpid()}"

    @broker.subscriber(Subject.HEALTH_PING.value, queue=QUEUE_GROUP, title="health ping")
    async def on_health_ping() -> NatsResponse:
        body = success_envelope({"status": "ok", "worker": worker_name}, new_request_id())
        return NatsResponse(orjson.dumps(body))

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
    )
