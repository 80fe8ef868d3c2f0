"""KEM subjects → KemService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.kem import KemService

__all__ = ["kem_router"]


def kem_router(handler: EnvelopeHandler, service: KemService) -> NatsRouter:
    """Subscribers for every KEM operation."""
    router = NatsRouter()
    subscribe(router, handler, Subject.KEM_ENCRYPT, service.encrypt)
    subscribe(router, handler, Subject.KEM_DECRYPT, service.decrypt)
    subscribe(router, handler, Subject.KEM_ENCAPSULATE, service.encapsulate)
    subscribe(router, handler, Subject.KEM_DECAPSULATE, service.decapsulate)
    subscribe(router, handler, Subject.KEM_KEY_WRAP, service.wrap)
    subscribe(router, handler, Subject.KEM_KEY_UNWRAP, service.unwrap)
    return router
