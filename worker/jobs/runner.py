"""The chunk runner: pulls job chunks from the shared durable consumer and processes them.

Per chunk: authenticate the API key from the chunk's headers → take rate-limit tokens
(one per item, in slices no larger than the plan's burst, waiting when empty) → run the
items through the batch service → publish the results (``Nats-Msg-Id`` per chunk, one
message per chunk subject) → ack. While a chunk runs, the runner tells JetStream it is
in progress; a worker killed mid-chunk stops doing so, and the chunk is redelivered to
another worker after the ack wait. A redelivered chunk whose results already exist is
acked without being processed again. A chunk whose job was deleted (its run, a token of
its subject, no longer the job's entry's: ``worker.jobs.service``) is dropped before it
runs, and a chunk whose job was deleted while it ran removes the results it has just
published.

A chunk waiting for its tenant's tokens does not hold the loop that fetched it: the loop
fetches the next chunk meanwhile, so a rate-limited tenant's job cannot hold up other
tenants' jobs. A worker has at most one chunk per tenant waiting: a chunk of a tenant
that already has one waiting is handed back to JetStream (nak with a delay of about
what the waiting chunk still needs) before it is authenticated or charged
(``worker.jobs.token_turns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
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
from worker.jobs.token_turns import TenantWaiting, TokenTurns
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
# Chunks waiting for their tenants' tokens without holding a loop, per worker: each
# keeps its message (up to a request's size) in memory. Past this, a chunk waits in its
# loop as every chunk once did.
_MOST_PARKED_CHUNKS = 32

LoopRelease = Callable[[], None]


class _JobGone(Exception):
    """The chunk's job was deleted (or deleted and submitted again: another run)."""


class JobRunner:
    """``concurrency`` loops, each fetching and processing one chunk at a time, except
    that a chunk waiting for its tenant's tokens lets its loop fetch the next one."""

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
        self._chunks: set[asyncio.Task[None]] = set()
        self._turns = TokenTurns(longest_delay=ack_wait, most_parked=_MOST_PARKED_CHUNKS)
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Start the loops in the background (they wait for JetStream if it is not up)."""
        self._tasks = [asyncio.create_task(self._loop(n), name=f"pqkms-jobs-{n}")
                       for n in range(self._concurrency)]

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop fetching and let the chunks in progress finish, those waiting for their
        tenant's tokens included; after ``grace_seconds`` the ones left are handed back to
        JetStream (nak) instead."""
        self._stopping.set()
        # No loop starts a chunk once stopping is set: these are all there will be.
        tasks = [*self._tasks, *self._chunks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
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
                            await self._start_chunk(message)
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

    async def _start_chunk(self, message: Msg) -> None:
        """Process ``message`` in a task of its own; return once it is done, or as soon as
        it waits for its tenant's tokens (it goes on without this loop)."""
        released = asyncio.get_running_loop().create_future()

        def release() -> None:
            if not released.done():
                released.set_result(None)

        chunk = asyncio.create_task(self._process(message, release))
        self._chunks.add(chunk)
        chunk.add_done_callback(self._chunks.discard)
        chunk.add_done_callback(lambda _: release())
        await released
        if chunk.done() and not chunk.cancelled() and (failure := chunk.exception()):
            raise failure  # NATS trouble outside a chunk's own handling: the loop starts over

    async def _process(self, message: Msg, release: LoopRelease) -> None:
        parts = message.subject.removeprefix(JOB_CHUNK_PREFIX + ".").split(".")
        if len(parts) not in (3, 4) or not parts[-1].isdigit():
            _log.warning("job_chunk_unreadable", reason="subject")
            await message.term()
            return
        # <tenant>.<job>.<run>.<n>, or <tenant>.<job>.<n> for a job from before runs
        tenant, job_id, index = parts[0], parts[1], int(parts[-1])
        run = parts[2] if len(parts) == 4 else None
        heartbeat = asyncio.create_task(self._keep_alive(message))
        try:
            # Before anything else: a chunk handed back is neither authenticated nor charged.
            self._turns.check(tenant)
            await self._check_live(tenant, job_id, run)
            if await self._streams.has_results(tenant, job_id, index, run):
                await message.ack()
                self._metrics.chunk_finished("duplicate")
                return
            outcome = await self._run_chunk(message, tenant, release)
            if outcome is None:
                await message.term()
                self._metrics.chunk_finished("dropped")
                return
            payload = orjson.dumps({"job_id": job_id, "chunk_index": index,
                                    **outcome.json_data()})
            headers = {"Nats-Msg-Id": result_message_id(tenant, job_id, index, run),
                       HEADER_ITEMS: str(outcome.total), HEADER_FAILED: str(outcome.failed)}
            await self._publish(results_subject(tenant, job_id, index, run), payload, headers)
            # Deleted while it ran? (Asked again while NATS fails: the delete purged the
            # chunk, so a nak would never bring it back.)
            await self._with_retries(lambda: self._check_live(tenant, job_id, run),
                                     "job_entry_retry")
            await message.ack_sync(timeout=5.0)
            self._metrics.chunk_finished("done")
            _log.info("job_chunk_done", tenant_id=tenant, job_id=job_id, chunk_index=index,
                      items=outcome.total, failed=outcome.failed)
        except _JobGone:
            await self._drop_deleted(message, results_subject(tenant, job_id, index, run))
            _log.info("job_chunk_deleted", tenant_id=tenant, job_id=job_id, chunk_index=index)
        except TenantWaiting as waiting:
            with contextlib.suppress(Exception):
                await message.nak(delay=waiting.delay)
            self._metrics.chunk_finished("deferred")
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

    async def _drop_deleted(self, message: Msg, results: str) -> None:
        """A chunk of a deleted job: its results (this run's own, or those a crashed
        run of it left) go, then the chunk. The delete has purged the chunk from the
        stream, so it would not come back: the purge is retried here, as a publish is.
        Should it still fail, the results stay until the job id is deleted again
        (its 404 removes them) or they expire."""
        try:
            await self._with_retries(
                lambda: self._streams.purge(JOB_RESULTS_STREAM, results), "job_purge_retry")
            self._metrics.chunk_finished("deleted")
        except Exception:
            _log.exception("job_chunk_results_left", subject=results)
            self._metrics.chunk_finished("failed")
        with contextlib.suppress(Exception):
            await message.ack()

    async def _check_live(self, tenant: str, job_id: str, run: str | None) -> None:
        """:class:`_JobGone` unless the job's entry is of the chunk's run exactly (a chunk
        without a run runs for an entry without one only: jobs from before runs)."""
        entry = await self._streams.job_entry(tenant, job_id)
        if entry is None or entry.run != run:
            raise _JobGone

    async def _keep_alive(self, message: Msg) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            with contextlib.suppress(Exception):
                await message.in_progress()

    async def _run_chunk(self, message: Msg, tenant: str,
                         release: LoopRelease) -> BatchOutcome | None:
        """The chunk's results; ``None`` for a chunk that must be dropped;
        :class:`TenantWaiting` for one to hand back (no token taken)."""
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
        await self._take_tokens(caller, len(items), release)
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

    async def _take_tokens(self, caller: Caller, count: int, release: LoopRelease) -> None:
        """One token per item, in slices no larger than the plan's burst; a job waits for
        its plan's rate instead of failing, and while it waits, ``release`` lets its loop
        fetch the next chunk. :class:`TenantWaiting`, before any token is taken, when
        another chunk of the tenant waits for tokens in this worker."""
        limits = self._settings.limits_for(caller.plan)
        if limits.rate_per_second is None or limits.burst is None:
            await self._rate_limiter.acquire(caller.tenant_id, limits, count)  # unlimited
            return
        turn = await self._turns.take_turn(caller.tenant_id, count, limits.rate_per_second)
        try:
            while turn.remaining > 0:
                take = min(turn.remaining, limits.burst or turn.remaining)
                try:
                    await self._rate_limiter.acquire(caller.tenant_id, limits, take)
                except RateLimited as exc:
                    if self._turns.wait_for_tokens(turn):
                        release()
                    await asyncio.sleep(exc.wait_seconds)
                    continue
                turn.remaining -= take
        finally:
            self._turns.end(turn)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish with retries: NATS may be restarting; the message id de-duplicates."""

        async def publish() -> None:
            await self._streams.js.publish(subject, payload, stream=JOB_RESULTS_STREAM,
                                           headers=headers, timeout=5.0)

        await self._with_retries(publish, "job_results_retry")

    @staticmethod
    async def _with_retries(action: Callable[[], Awaitable[None]], event: str) -> None:
        """``action`` until it succeeds, at most ``_PUBLISH_ATTEMPTS`` times a second
        apart (NATS may be restarting); the last failure is raised, and a
        :class:`_JobGone` at once."""
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                await action()
                return
            except _JobGone:
                raise
            except Exception as exc:
                if attempt == _PUBLISH_ATTEMPTS - 1:
                    raise
                _log.warning(event, reason=type(exc).__name__)
                await asyncio.sleep(_RETRY_SECONDS)


async def _unsubscribe(subscription: Any) -> None:
    if subscription is not None:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
