"""Batch subjects → BatchService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.direct import DirectResponder
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.batch import BatchService

__all__ = ["batch_router"]


def batch_router(
    handler: EnvelopeHandler, service: BatchService, direct: DirectResponder | None = None
) -> NatsRouter:
    """Subscribers for the batch variants of encrypt, decrypt, sign and verify."""
    router = NatsRouter()
    subscribe(router, handler, Subject.KEM_ENCRYPT_BATCH, service.encrypt, direct)
    subscribe(router, handler, Subject.KEM_DECRYPT_BATCH, service.decrypt, direct)
    subscribe(router, handler, Subject.SIGNATURE_SIGN_BATCH, service.sign, direct)
    subscribe(router, handler, Subject.SIGNATURE_VERIFY_BATCH, service.verify, direct)
    return router
