"""The data plane's fast path: crypto subjects served straight on the broker's connection.

FastStream stays the worker's framework: it owns the NATS connection, its reconnects
and shutdown, the JetStream jobs, the key-management and health subjects. Only the
request/reply crypto subjects (encrypt, sign, their batches...) skip its per-message
machinery — a task, a semaphore, context scopes and middlewares, ≈ 330 µs per message
here, more than the crypto itself — and are served by a plain nats-py subscription on
the same connection, in the same queue group, through the same envelope handler. The
replies are byte for byte the same; see docs/performance.md for the figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.operations import Operation, operation_for
from schemas.subjects import QUEUE_GROUP, Subject
from worker.handlers.envelope import EnvelopeHandler, LeanCall, ServiceCall
from worker.handlers.graceful_stop import leave
from worker.handlers.reply_guard import refuse_unanswerable

__all__ = ["DirectResponder", "DirectRoute"]

_log = structlog.get_logger("pqkms.worker")
# Messages a subscription may hold before nats-py drops them as a slow consumer: far
# above what the in-flight bound lets pile up, so backpressure comes from the bound, and
# a few seconds of a worker's work (≈ 10 000 encryptions a second), so that a flood is
# shed instead of queued: 1 million once kept a subject's callers waiting for minutes.
# The bytes allow bursts of 1 MiB requests (tests/integration/test_large_payload_bursts.py).
_PENDING_MESSAGES = 50_000
_PENDING_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DirectRoute:
    """One subject and the service call that answers it."""

    operation: Operation
    call: ServiceCall
    lean: LeanCall | None = None


class DirectResponder:
    """Serves its routes on a nats-py connection; at most ``max_in_flight`` at once."""

    def __init__(
        self, handler: EnvelopeHandler, max_in_flight: int, stop_timeout: float = 15.0
    ) -> None:
        self._handler = handler
        self._stop_timeout = stop_timeout
        self._routes: dict[str, DirectRoute] = {}
        # A counter, not an asyncio.Semaphore: Python 3.11's ``acquire`` scans every
        # waiter on each call (measured: ≈ 5 % of a worker's CPU at 200 in flight).
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._slot_freed: asyncio.Future[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._subscriptions: list[Subscription] = []
        self._connection: NatsClient | None = None

    def add(self, subject: Subject, call: ServiceCall, lean: LeanCall | None = None) -> None:
        """Serve ``subject`` with ``call`` (and ``lean`` first, if given) once started."""
        self._routes[subject.value] = DirectRoute(operation_for(subject), call, lean)

    @property
    def subjects(self) -> Sequence[str]:
        """The subjects this responder serves."""
        return tuple(self._routes)

    async def start(self, connection: NatsClient) -> None:
        """Subscribe every route in the workers' queue group."""
        self._connection = connection
        for subject in self._routes:
            subscription = await connection.subscribe(
                subject,
                queue=QUEUE_GROUP,
                cb=self._on_message,
                pending_msgs_limit=_PENDING_MESSAGES,
                pending_bytes_limit=_PENDING_BYTES,
            )
            self._subscriptions.append(subscription)
        await connection.flush()

    async def stop(self) -> None:
        """Leave the queue group (serving what NATS has routed here until it confirms),
        then let the requests taken finish and reply."""
        subscriptions, self._subscriptions = self._subscriptions, []
        await leave(subscriptions, self._stop_timeout)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _on_message(self, msg: Msg) -> None:
        # nats-py awaits one callback at a time per subscription: take a slot (waiting
        # here is the backpressure) and hand the request to its own task.
        if refuse_unanswerable(msg.subject, msg.reply):
            return
        loop = asyncio.get_running_loop()
        while self._in_flight >= self._max_in_flight:
            if self._slot_freed is None or self._slot_freed.done():
                self._slot_freed = loop.create_future()
            await self._slot_freed
        self._in_flight += 1
        task = loop.create_task(self._answer(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _release_slot(self) -> None:
        self._in_flight -= 1
        freed = self._slot_freed
        if freed is not None and not freed.done():
            freed.set_result(None)

    async def _answer(self, msg: Msg) -> None:
        try:
            route = self._routes[msg.subject]
            (body, headers), finish = await self._handler.respond(
                route.operation, route.call, msg.data, msg.headers, route.lean
            )
            try:
                if msg.reply and self._connection is not None:
                    await self._connection.publish(msg.reply, body, headers=headers)
            finally:
                # The metrics and the log line once nats-py has written the reply (its
                # flusher runs first: it was woken by the publish).
                asyncio.get_running_loop().call_soon(finish)
        except Exception:
            # The handler never raises; a failed publish (connection lost) is logged.
            _log.exception("direct_reply_failed", subject=msg.subject)
        finally:
            self._release_slot()
