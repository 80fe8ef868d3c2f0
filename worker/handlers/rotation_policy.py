"""Rotation policy subjects (NATS only) → KeyLifecycleService."""

from __future__ import annotations

from faststream.nats import NatsRouter

from schemas.subjects import Subject
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.routing import subscribe
from worker.services.keys import KeyLifecycleService

__all__ = ["rotation_policy_router"]


def rotation_policy_router(handler: EnvelopeHandler, service: KeyLifecycleService) -> NatsRouter:
    """Subscribers for setting and reading a tenant's scheduled rotation."""
    router = NatsRouter()
    subscribe(router, handler, Subject.KEYS_ROTATION_POLICY_SET, service.set_rotation_policy)
    subscribe(router, handler, Subject.KEYS_ROTATION_POLICY_GET, service.get_rotation_policy)
    return router
