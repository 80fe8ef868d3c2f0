"""Signature subjects → SignatureService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.direct import DirectResponder
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.signatures import SignatureService

__all__ = ["signature_router"]


def signature_router(
    handler: EnvelopeHandler, service: SignatureService, direct: DirectResponder | None = None
) -> NatsRouter:
    """Subscribers for every signature operation."""
    router = NatsRouter()
    subscribe(router, handler, Subject.SIGNATURE_SIGN, service.sign, direct, service.sign_lean)
    subscribe(router, handler, Subject.SIGNATURE_VERIFY, service.verify, direct,
              service.verify_lean)
    subscribe(router, handler, Subject.SIGNATURE_SIGN_HASH, service.sign_hash, direct)
    subscribe(router, handler, Subject.SIGNATURE_VERIFY_HASH, service.verify_hash, direct)
    return router
