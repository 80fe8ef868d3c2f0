"""Subscribe one service method per subject, all in the workers' queue group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from faststream import AckPolicy
from faststream.exceptions import IgnoredException
from faststream.nats import NatsBroker, NatsResponse, NatsRouter
from faststream.nats.message import NatsMessage

from schemas.operations import operation_for
from schemas.subjects import QUEUE_GROUP, Subject
from worker.handlers.direct import DirectResponder
from worker.handlers.envelope import EnvelopeHandler, LeanCall, ServiceCall
from worker.handlers.reply_guard import refuse_unanswerable

__all__ = [
    "DATA_PLANE_SUBJECTS", "MAX_IN_FLIGHT_PER_SUBJECT", "MessageAnswer", "subscribe",
    "subscribe_message",
]

# Requests handled concurrently per subject and worker process.
MAX_IN_FLIGHT_PER_SUBJECT = 64
# Requests a subscription may hold beyond those in flight before nats-py drops the next
# ones as a slow consumer: seconds of work for a key-management subject. A flood with
# nothing to stop it once queued 1 million requests, and real ones waited 15 minutes.
PENDING_REQUESTS = 10_000
# The crypto subjects, served by the direct responder when the worker has one.
DATA_PLANE_SUBJECTS = frozenset({
    Subject.KEM_ENCRYPT, Subject.KEM_DECRYPT, Subject.KEM_ENCAPSULATE,
    Subject.KEM_DECAPSULATE, Subject.KEM_KEY_WRAP, Subject.KEM_KEY_UNWRAP,
    Subject.SIGNATURE_SIGN, Subject.SIGNATURE_VERIFY, Subject.SIGNATURE_SIGN_HASH,
    Subject.SIGNATURE_VERIFY_HASH, Subject.KEM_ENCRYPT_BATCH, Subject.KEM_DECRYPT_BATCH,
    Subject.SIGNATURE_SIGN_BATCH, Subject.SIGNATURE_VERIFY_BATCH,
})


# Answers one raw request message with its reply.
MessageAnswer = Callable[[NatsMessage], Awaitable[NatsResponse]]


async def _message_itself(msg: NatsMessage) -> NatsMessage:
    """A decoder that hands the handler the raw message (async: a sync one would run
    in a thread)."""
    return msg


def subscribe(
    router: NatsRouter,
    handler: EnvelopeHandler,
    subject: Subject,
    call: ServiceCall,
    direct: DirectResponder | None = None,
    lean: LeanCall | None = None,
) -> None:
    """Serve ``subject`` with ``call`` through the envelope handler: on the direct
    responder for data-plane subjects when one is given, else as a FastStream subscriber."""
    if direct is not None and subject in DATA_PLANE_SUBJECTS:
        direct.add(subject, call, lean)
        return
    operation = operation_for(subject)

    async def answer(message: NatsMessage) -> NatsResponse:
        (body, headers), finish = await handler.respond(operation, call, message.body,
                                                        message.headers, lean)
        finish()  # (FastStream sends the reply once this returns)
        return NatsResponse(body, headers=headers)

    subscribe_message(router, subject, answer)


def subscribe_message(router: NatsRouter | NatsBroker, subject: Subject, answer: MessageAnswer,
                      description: str | None = None) -> None:
    """A FastStream subscriber for ``subject`` in the workers' queue group that hands
    ``answer`` the raw message: no JSON decoding, dependency injection or
    acknowledgement by FastStream (``answer`` decodes the body itself). A request whose
    reply subject is missing or reserved is dropped unanswered (``refuse_unanswerable``)."""

    # The message reaches the handler through the decoder below, as the handler's one
    # (untyped, so unvalidated) argument. The ``NatsMessage`` context annotation would
    # cost a thread-pool round trip per request: fast_depends resolves that sync
    # context field with ``anyio.to_thread``.
    async def on_request(msg: Any) -> NatsResponse:
        if refuse_unanswerable(subject.value, msg.reply_to):
            raise IgnoredException  # (FastStream then sends nothing, and logs nothing)
        return await answer(msg)

    on_request.__name__ = f"on_{subject.value.replace('.', '_').replace('-', '_')}"
    router.subscriber(
        subject.value,
        queue=QUEUE_GROUP,
        max_workers=MAX_IN_FLIGHT_PER_SUBJECT,
        # Past this backlog nats-py drops requests (slow consumer) rather than queue
        # minutes of work whose callers have long timed out (nats-py's default: 524 288).
        pending_msgs_limit=PENDING_REQUESTS,
        decoder=_message_itself,
        # Core NATS request/reply has nothing to acknowledge, and the handler never
        # raises (every failure is an error envelope): MANUAL drops FastStream's
        # acknowledgement middleware from every message.
        ack_policy=AckPolicy.MANUAL,
        title=subject.value,
        description=description or operation_for(subject).summary,
    )(on_request)
