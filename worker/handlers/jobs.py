"""Job subjects → JobService (NATS only: submit, status, results, delete)."""

from __future__ import annotations

from typing import Any

from faststream.nats import NatsResponse, NatsRouter
from faststream.nats.message import NatsMessage
from pydantic import BaseModel

from schemas.jobs import JobSubmitRequest
from schemas.operations import operation_for
from schemas.subjects import HEADER_API_KEY, Subject
from worker.handlers.envelope import EnvelopeHandler, header_value
from worker.handlers.routing import subscribe, subscribe_message
from worker.jobs.service import JobService
from worker.services.context import Caller

__all__ = ["jobs_router"]


def jobs_router(handler: EnvelopeHandler, service: JobService) -> NatsRouter:
    """Subscribers for job submit, status, results and delete."""
    router = NatsRouter()
    subscribe(router, handler, Subject.JOBS_STATUS, service.status)
    subscribe(router, handler, Subject.JOBS_RESULTS, service.results)
    subscribe(router, handler, Subject.JOBS_DELETE, service.delete)
    submit = operation_for(Subject.JOBS_SUBMIT)

    async def answer_submit(msg: NatsMessage) -> NatsResponse:
        # The chunk keeps the submitter's API key (in its headers) for the worker that
        # runs it; the envelope handler has already authenticated it.
        api_key = header_value(msg.headers, HEADER_API_KEY) or ""

        async def call(caller: Caller, request: Any) -> BaseModel:
            assert isinstance(request, JobSubmitRequest)
            return await service.submit(caller, request, api_key, msg.body)

        (body, headers), finish = await handler.respond(submit, call, msg.body, msg.headers)
        finish()  # (FastStream sends the reply once this returns)
        return NatsResponse(body, headers=headers)

    subscribe_message(router, Subject.JOBS_SUBMIT, answer_submit)
    return router
