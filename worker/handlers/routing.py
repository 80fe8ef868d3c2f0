"""Subscribe one service method per subject, all in the workers' queue group."""

from __future__ import annotations

from faststream.nats import NatsResponse, NatsRouter
from faststream.nats.annotations import NatsMessage

from schemas.operations import operation_for
from schemas.subjects import QUEUE_GROUP, Subject
from worker.handlers.envelope import EnvelopeHandler, ServiceCall

__all__ = ["MAX_IN_FLIGHT_PER_SUBJECT", "subscribe"]

# Requests handled concurrently per subject and worker process.
MAX_IN_FLIGHT_PER_SUBJECT = 64


def subscribe(
    router: NatsRouter, handler: EnvelopeHandler, subject: Subject, call: ServiceCall
) -> None:
    """Serve ``subject`` with ``call`` through the envelope handler."""
    operation = operation_for(subject)

    async def on_request(msg: NatsMessage) -> NatsResponse:
        body, headers = await handler.handle(operation, call, msg.body, msg.headers)
        return NatsResponse(body, headers=headers)

    on_request.__name__ = f"on_{subject.value.replace('.', '_').replace('-', '_')}"
    router.subscriber(
        subject.value,
        queue=QUEUE_GROUP,
        max_workers=MAX_IN_FLIGHT_PER_SUBJECT,
        title=subject.value,
        description=operation.summary,
    )(on_request)
