"""Signature subjects → SignatureService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.signatures import SignatureService

__all__ = ["signature_router"]


def signature_router(handler: EnvelopeHandler, service: SignatureService) -> NatsRouter:
    """Subscribers for every signature operation."""
    router = NatsRouter()
    subscribe(router, handler, Subject.SIGNATURE_SIGN, service.sign)
    subscribe(router, handler, Subject.SIGNATURE_VERIFY, service.verify)
    subscribe(router, handler, Subject.SIGNATURE_SIGN_HASH, service.sign_hash)
    subscribe(router, handler, Subject.SIGNATURE_VERIFY_HASH, service.verify_hash)
    return router
