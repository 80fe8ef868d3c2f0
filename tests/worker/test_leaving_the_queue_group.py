"""A stopping worker answers every request NATS has already routed to it.

Against a real nats-server: requests are sent, reach the worker's connection and wait
there (behind the in-flight bound, or in FastStream's buffer) when the worker stops. Each
one must still be answered. With nats-py's ``unsubscribe`` or FastStream's ``stop`` alone
those waiting requests were dropped, unanswered (worker/handlers/graceful_stop.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient

from pqkms.nats_embedded import EmbeddedNats
from schemas.subjects import QUEUE_GROUP, Subject
from worker.handlers.direct import DirectResponder
from worker.handlers.envelope import EnvelopeHandler
from worker.handlers.graceful_stop import leave_broker_subjects
from worker.handlers.ordered_flush import send_pings_behind_queued_commands

REQUESTS = 8
HANDLING_SECONDS = 0.2
SLOW_SUBJECT = "pqkms.test.slow"


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


async def _send_all(client: NatsClient, subject: str) -> asyncio.Future[list[Any]]:
    """``REQUESTS`` requests at once; returns when all are on their way."""
    replies = asyncio.gather(*(client.request(subject, b"r%d" % n, timeout=10)
                               for n in range(REQUESTS)), return_exceptions=True)
    await client.flush()
    await asyncio.sleep(HANDLING_SECONDS / 2)  # all delivered; the first ones being handled
    return replies


class _SlowHandler:
    """Stands in for the envelope handler: answers each request after a while."""

    async def respond(self, operation: Any, call: Any, data: bytes, headers: Any,
                      lean: Any = None) -> tuple[tuple[bytes, dict[str, str]], Any]:
        await asyncio.sleep(HANDLING_SECONDS)
        return (b"answer " + data, {}), lambda: None


async def test_the_direct_responder_answers_what_it_has_received(
    nats_server: EmbeddedNats, client: NatsClient
) -> None:
    worker = await nats.connect(nats_server.url)
    send_pings_behind_queued_commands(worker)  # as worker/main.py does
    try:
        # One request at a time: the other seven wait in nats-py's queue when stop begins.
        responder = DirectResponder(cast(EnvelopeHandler, _SlowHandler()), max_in_flight=1)
        responder.add(Subject.KEM_ENCRYPT, cast(Any, None))
        await responder.start(worker)  # its flush: the SUB is on the server now
        replies = await _send_all(client, Subject.KEM_ENCRYPT.value)
        await responder.stop()
        answered = await replies
    finally:
        await worker.close()
    assert [reply.data for reply in answered] == [b"answer r%d" % n for n in range(REQUESTS)]


@pytest.fixture
async def slow_broker(nats_server: EmbeddedNats) -> AsyncIterator[NatsBroker]:
    """A started FastStream broker answering ``SLOW_SUBJECT`` after a while, 2 at a time
    (the others wait in FastStream's buffer), in the workers' queue group."""
    broker = NatsBroker(nats_server.url)

    @broker.subscriber(SLOW_SUBJECT, queue=QUEUE_GROUP, max_workers=2)
    async def slow(body: bytes) -> bytes:
        await asyncio.sleep(HANDLING_SECONDS)
        return b"answer " + body

    await broker.connect()
    send_pings_behind_queued_commands(broker.connection)  # as worker/main.py does
    await broker.start()
    try:
        await broker.connection.flush()  # FastStream's SUB is on the server now
        yield broker
    finally:
        await broker.stop()  # after leaving: finds no subscription to drop, and no error


async def test_faststream_subscribers_answer_what_they_have_received(
    slow_broker: NatsBroker, client: NatsClient
) -> None:
    replies = await _send_all(client, SLOW_SUBJECT)
    await leave_broker_subjects(slow_broker, timeout=10)
    answered = await asyncio.wait_for(replies, 10)
    assert [reply.data for reply in answered] == [b"answer r%d" % n for n in range(REQUESTS)]


async def test_after_leaving_no_request_is_routed_to_the_worker(
    slow_broker: NatsBroker, client: NatsClient
) -> None:
    await leave_broker_subjects(slow_broker, timeout=10)
    with pytest.raises(nats.errors.NoRespondersError):
        await client.request(SLOW_SUBJECT, b"x", timeout=5)
