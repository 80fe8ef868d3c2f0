"""Key management subjects → KeyLifecycleService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.keys import KeyLifecycleService

__all__ = ["keys_router"]


def keys_router(handler: EnvelopeHandler, service: KeyLifecycleService) -> NatsRouter:
    """Subscribers for every key lifecycle operation."""
    router = NatsRouter()
    subscribe(router, handler, Subject.KEYS_GENERATE, service.generate)
    subscribe(router, handler, Subject.KEYS_LIST, service.list)
    subscribe(router, handler, Subject.KEYS_ACTIVE, service.active)
    subscribe(router, handler, Subject.KEYS_GET, service.get)
    subscribe(router, handler, Subject.KEYS_ROTATE, service.rotate)
    subscribe(router, handler, Subject.KEYS_RETIRE, service.retire)
    subscribe(router, handler, Subject.KEYS_ARCHIVE, service.archive)
    return router
