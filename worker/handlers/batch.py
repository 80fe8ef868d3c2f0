"""Batch subjects → BatchService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.batch import BatchService

__all__ = ["batch_router"]


def batch_router(handler: EnvelopeHandler, service: BatchService) -> NatsRouter:
    """Subscribers for the batch variants of encrypt, decrypt, sign and verify."""
    router = NatsRouter()
    subscribe(router, handler, Subject.KEM_ENCRYPT_BATCH, service.encrypt)
    subscribe(router, handler, Subject.KEM_DECRYPT_BATCH, service.decrypt)
    subscribe(router, handler, Subject.SIGNATURE_SIGN_BATCH, service.sign)
    subscribe(router, handler, Subject.SIGNATURE_VERIFY_BATCH, service.verify)
    return router
