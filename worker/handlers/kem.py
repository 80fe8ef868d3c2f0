"""KEM subjects → KemService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.direct import DirectResponder
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.kem import KemService

__all__ = ["kem_router"]


def kem_router(
    handler: EnvelopeHandler, service: KemService, direct: DirectResponder | None = None
) -> NatsRouter:
    """Subscribers for every KEM operation."""
    router = NatsRouter()
    subscribe(router, handler, Subject.KEM_ENCRYPT, service.encrypt, direct,
              service.encrypt_lean)
    subscribe(router, handler, Subject.KEM_DECRYPT, service.decrypt, direct,
              service.decrypt_lean)
    subscribe(router, handler, Subject.KEM_ENCAPSULATE, service.encapsulate, direct)
    subscribe(router, handler, Subject.KEM_DECAPSULATE, service.decapsulate, direct)
    subscribe(router, handler, Subject.KEM_KEY_WRAP, service.wrap, direct)
    subscribe(router, handler, Subject.KEM_KEY_UNWRAP, service.unwrap, direct)
    return router
