"""The chunk runner: pulls job chunks from the shared durable consumer and processes them.

Per chunk: authenticate the API key from the chunk's headers → take rate-limit tokens
(one per item, in slices no larger than the plan's burst, waiting when empty) → run the
items through the batch service → publish the results (``Nats-Msg-Id`` per chunk, one
message per chunk subject) → ack. While a chunk runs, the runner tells JetStream it is
in progress; a worker killed mid-chunk stops doing so, and the chunk is redelivered to
another worker after the ack wait. A redelivered chunk whose results already exist is
acked without being processed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from schemas.envelope import new_request_id
from schemas.jobs import (
    JOB_CHUNK_PREFIX,
    JOB_CHUNKS_STREAM,
    JOB_RESULTS_STREAM,
    JobOperation,
    result_message_id,
    results_subject,
)
from schemas.subjects import HEADER_API_KEY, HEADER_REQUEST_ID
from worker.config import Settings
from worker.errors import RateLimited, ServiceError
from worker.handlers.envelope import header_value
from worker.jobs.service import HEADER_FAILED, HEADER_ITEMS
from worker.jobs.streams import CONSUMER, JobStreams
from worker.metrics import NO_JOB_METRICS, JobChunkMetrics
from worker.services.auth import Authenticator
from worker.services.batch import BatchService
from worker.services.batch_items import BatchOutcome, error_item
from worker.services.context import Caller
from worker.services.rate_limit import RateLimiter
from worker.services.request_record import NO_AUDIT, AuditSink, RequestRecord
from worker.services.transient import is_unavailable

__all__ = ["JobRunner"]

_log = structlog.get_logger("pqkms.worker")
_FETCH_SECONDS = 1.0
_RETRY_SECONDS = 1.0
_PUBLISH_ATTEMPTS = 120


class JobRunner:
    """``concurrency`` loops, each fetching and processing one chunk at a time."""

    def __init__(
        self,
        streams: JobStreams,
        batches: BatchService,
        authenticator: Authenticator,
        rate_limiter: RateLimiter,
        settings: Settings,
        concurrency: int,
        ack_wait: float,
        metrics: JobChunkMetrics = NO_JOB_METRICS,
        audit: AuditSink = NO_AUDIT,
    ) -> None:
        self._streams = streams
        self._batches = batches
        self._auth = authenticator
        self._rate_limiter = rate_limiter
        self._settings = settings
        self._concurrency = concurrency
        self._metrics = metrics
        self._audit = audit
        self._heartbeat = max(0.5, ack_wait / 3)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Start the loops in the background (they wait for JetStream if it is not up)."""
        self._tasks = [asyncio.create_task(self._loop(n), name=f"pqkms-jobs-{n}")
                       for n in range(self._concurrency)]

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop fetching and let a chunk in progress finish; after ``grace_seconds`` it is
        handed back to JetStream (nak) instead."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []

    async def _loop(self, number: int) -> None:
        subscription: Any = None
        try:
            while not self._stopping.is_set():
                try:
                    if subscription is None:
                        await self._streams.ensure()
                        await self._streams.ensure_consumer()
                        subscription = await self._streams.js.pull_subscribe_bind(
                            durable=CONSUMER, stream=JOB_CHUNKS_STREAM
                        )
                        _log.info("job_runner_ready", loop=number)
                    try:
                        messages = await subscription.fetch(1, timeout=_FETCH_SECONDS)
                    except NatsTimeoutError:
                        continue
                    for message in messages:
                        if self._stopping.is_set():
                            await message.nak()
                        else:
                            await self._process(message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # NATS restarting, JetStream not ready, consumer gone: start over.
                    _log.warning("job_runner_retry", loop=number, reason=type(exc).__name__)
                    await _unsubscribe(subscription)
                    subscription = None
                    self._streams.forget()
                    await asyncio.sleep(_RETRY_SECONDS)
        finally:
            # A pull subscription left open would hold up the connection's drain.
            await _unsubscribe(subscription)

    async def _process(self, message: Msg) -> None:
        parts = message.subject.removeprefix(JOB_CHUNK_PREFIX + ".").split(".")
        if len(parts) != 3 or not parts[2].isdigit():
            _log.warning("job_chunk_unreadable", reason="subject")
            await message.term()
            return
        tenant, job_id, index = parts[0], parts[1], int(parts[2])
        heartbeat = asyncio.create_task(self._keep_alive(message))
        try:
            if await self._streams.has_results(tenant, job_id, index):
                await message.ack()
                self._metrics.chunk_finished("duplicate")
                return
            outcome = await self._run_chunk(message, tenant)
            if outcome is None:
                await message.term()
                self._metrics.chunk_finished("dropped")
                return
            payload = orjson.dumps({"job_id": job_id, "chunk_index": index,
                                    **outcome.json_data()})
            headers = {"Nats-Msg-Id": result_message_id(tenant, job_id, index),
                       HEADER_ITEMS: str(outcome.total), HEADER_FAILED: str(outcome.failed)}
            await self._publish(results_subject(tenant, job_id, index), payload, headers)
            await message.ack_sync(timeout=5.0)
            self._metrics.chunk_finished("done")
            _log.info("job_chunk_done", tenant_id=tenant, job_id=job_id, chunk_index=index,
                      items=outcome.total, failed=outcome.failed)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await message.nak()
            raise
        except Exception:
            _log.exception("job_chunk_failed", tenant_id=tenant, job_id=job_id,
                           chunk_index=index)
            self._metrics.chunk_finished("failed")
            with contextlib.suppress(Exception):
                await message.nak(delay=5)
        finally:
            heartbeat.cancel()

    async def _keep_alive(self, message: Msg) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            with contextlib.suppress(Exception):
                await message.in_progress()

    async def _run_chunk(self, message: Msg, tenant: str) -> BatchOutcome | None:
        """The chunk's results; ``None`` for a chunk that must be dropped."""
        try:
            body = orjson.loads(message.data)
            operation = JobOperation(body["operation"])
            items = body["items"]
            assert isinstance(items, list)
        except Exception:
            _log.warning("job_chunk_unreadable", reason="body")
            return None
        request_id = header_value(message.headers, HEADER_REQUEST_ID) or new_request_id()
        started = time.perf_counter()
        try:
            caller = await self._auth.authenticate(
                header_value(message.headers, HEADER_API_KEY), request_id
            )
        except ServiceError as exc:
            if is_unavailable(exc):
                raise  # naked: done again once the database answers
            # The key was revoked since submit: every item says so.
            await self._audit_chunk(operation, body, request_id, None, exc.code.value, started)
            return BatchOutcome([error_item(exc.code, exc.message, None) for _ in items],
                                failed=len(items))
        if caller.tenant_id != tenant:
            _log.warning("job_chunk_wrong_tenant", tenant_id=caller.tenant_id)
            return None
        await self._take_tokens(caller, len(items))
        result = await self._batches.run(operation.subject, caller, items,
                                         body.get("key_version"), body.get("algorithm"))
        self._metrics.chunk_items(operation.batch_subject.value, result.total, result.failed)
        # No audit record, no results: a raise here naks the chunk, to be done again.
        await self._audit_chunk(operation, body, request_id, caller.tenant_id, "OK", started)
        return result

    async def _audit_chunk(self, operation: JobOperation, body: dict[str, Any], request_id: str,
                           tenant_id: str | None, outcome: str, started: float) -> None:
        """One audit record per processed chunk (``request_id`` is the submit's)."""
        key_version, algorithm = body.get("key_version"), body.get("algorithm")
        await self._audit.append(RequestRecord(
            operation=operation.batch_subject.value, request_id=request_id, tenant_id=tenant_id,
            algorithm=algorithm if isinstance(algorithm, str) else None,
            key_version=key_version if type(key_version) is int else None,
            outcome=outcome, duration_seconds=time.perf_counter() - started,
            items=len(body["items"]),
        ))

    async def _take_tokens(self, caller: Caller, count: int) -> None:
        """One token per item; a job waits for its plan's rate instead of failing."""
        limits = self._settings.limits_for(caller.plan)
        remaining = count
        while remaining > 0:
            take = min(remaining, limits.burst or remaining)
            try:
                await self._rate_limiter.acquire(caller.tenant_id, limits, take)
            except RateLimited as exc:
                await asyncio.sleep(exc.wait_seconds)
                continue
            remaining -= take

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish with retries: NATS may be restarting; the message id de-duplicates."""
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                await self._streams.js.publish(subject, payload, stream=JOB_RESULTS_STREAM,
                                               headers=headers, timeout=5.0)
                return
            except Exception as exc:
                if attempt == _PUBLISH_ATTEMPTS - 1:
                    raise
                _log.warning("job_results_retry", reason=type(exc).__name__)
                await asyncio.sleep(_RETRY_SECONDS)


async def _unsubscribe(subscription: Any) -> None:
    if subscription is not None:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
