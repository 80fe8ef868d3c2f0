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
from worker.bulk_config import get_bulk_settings
from worker.config import Settings
from worker.handlers.batch import batch_router
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.kem import kem_router
from worker.handlers.keys import keys_router
from worker.handlers.signatures import signature_router
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

__all__ = ["WorkerServices", "build_broker", "build_services", "nats_servers"]


@dataclass(frozen=True, slots=True)
class WorkerServices:
    """Everything a worker serves, wired together; no NATS inside."""

    handler: EnvelopeHandler
    keys: KeyLifecycleService
    kem: KemService
    signatures: SignatureService
    batch: BatchService
    runner: CryptoRunner


def build_services(
    settings: Settings, store: KeyStore, rate_limiter: RateLimiter
) -> WorkerServices:
    """Wire services to a store and a rate limiter."""
    runner = CryptoRunner(settings.crypto_threads)
    access = KeyAccess(store)
    handler = EnvelopeHandler(Authenticator(store), rate_limiter, settings)
    kem = KemService(access, runner, settings.max_message_bytes)
    signatures = SignatureService(access, runner, settings.max_message_bytes)
    return WorkerServices(
        handler=handler,
        keys=KeyLifecycleService(store, access, settings),
        kem=kem,
        signatures=signatures,
        batch=BatchService(access, runner, settings.max_message_bytes,
                           get_bulk_settings().batch_max_items, settings.nats_max_payload()),
        runner=runner,
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
    worker_name = f"{socket.gethostname()}:{os.getpid()}"

    @broker.subscriber(Subject.HEALTH_PING.value, queue=QUEUE_GROUP, title="health ping")
    async def on_health_ping() -> NatsResponse:
        body = success_envelope({"status": "ok", "worker": worker_name}, new_request_id())
        return NatsResponse(orjson.dumps(body))

    return broker
