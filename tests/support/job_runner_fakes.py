"""Stand-ins for a job runner's JetStream, authenticator, batch service, rate limiter and
metrics: the runner runs for real on them (``worker.jobs.runner``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any, cast

import orjson
from nats.errors import TimeoutError as NatsTimeoutError

from schemas.algorithms import Plan
from schemas.jobs import chunk_subject
from schemas.subjects import HEADER_API_KEY, Subject
from worker.config import PlanLimits, Settings
from worker.errors import RateLimited
from worker.jobs import JobRunner
from worker.jobs.streams import JobEntry
from worker.services.batch_items import BatchOutcome
from worker.services.context import Caller

FREE, OTHER_FREE, ENTERPRISE = "tenant-free", "tenant-other-free", "tenant-enterprise"
PLANS = {FREE: Plan.FREE, OTHER_FREE: Plan.FREE, ENTERPRISE: Plan.ENTERPRISE}
ACK_WAIT = 30.0  # the longest hand-back
FREE_RATE = 10.0  # Settings' default for the free plan


class ChunkMessage:
    """A chunk as the runner fetches it; ``settled`` says how it left the runner."""

    def __init__(self, tenant: str, index: int, items: int, run: str | None = None) -> None:
        self.subject = chunk_subject(tenant, "job", index, run)
        self.data = orjson.dumps({"operation": "kem.encrypt", "key_version": 1,
                                  "items": [{"plaintext": "AA=="}] * items})
        self.headers = {HEADER_API_KEY: f"key-of-{tenant}"}
        self.settled: asyncio.Future[tuple[str, float | None]] = (
            asyncio.get_running_loop().create_future())

    def _settle(self, how: str, delay: float | None = None) -> None:
        if not self.settled.done():
            self.settled.set_result((how, delay))

    async def ack(self) -> None:
        self._settle("ack")

    async def ack_sync(self, timeout: float) -> None:
        self._settle("ack")

    async def nak(self, delay: float | None = None) -> None:
        self._settle("nak", delay)

    async def term(self) -> None:
        self._settle("term")

    async def in_progress(self) -> None:
        return None


class ChunkQueue:
    """The pull subscription: hands out what the test puts in, one at a time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ChunkMessage] = asyncio.Queue()

    async def fetch(self, batch: int, timeout: float) -> list[ChunkMessage]:
        try:
            return [await asyncio.wait_for(self.queue.get(), timeout)]
        except TimeoutError:
            raise NatsTimeoutError from None

    async def unsubscribe(self) -> None:
        return None


class Streams:
    """The runner's JetStream: ``entries`` are the job entry's answers, in turn (the
    last one from then on; an exception is raised); ``published`` and ``purged`` the
    subjects written and purged; the first ``purge_failures`` purges fail."""

    def __init__(self, chunks: ChunkQueue) -> None:
        self.chunks = chunks
        self.published: list[str] = []
        self.purged: list[str] = []
        self.entries: list[dict[str, Any] | Exception | None] = [{}]
        self.purge_failures = 0
        self.js = self

    async def ensure(self) -> None:
        return None

    async def ensure_consumer(self) -> None:
        return None

    def forget(self) -> None:
        return None

    async def pull_subscribe_bind(self, durable: str, stream: str) -> ChunkQueue:
        return self.chunks

    async def has_results(self, tenant: str, job_id: str, index: int, run: str | None) -> bool:
        return False

    async def job_entry(self, tenant: str, job_id: str) -> JobEntry | None:
        fields = self.entries.pop(0) if len(self.entries) > 1 else self.entries[0]
        if isinstance(fields, Exception):
            raise fields
        return None if fields is None else JobEntry(fields, 1)

    async def purge(self, stream: str, subject: str) -> None:
        if self.purge_failures:
            self.purge_failures -= 1
            raise ConnectionError("NATS is restarting")
        self.purged.append(subject)

    async def publish(self, subject: str, payload: bytes, **_: Any) -> None:
        self.published.append(subject)


class Authenticator:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def authenticate(self, api_key: str | None, request_id: str) -> Caller:
        assert api_key is not None
        tenant = api_key.removeprefix("key-of-")
        self.calls[tenant] += 1
        return Caller(tenant, PLANS[tenant], request_id)


class Batches:
    def __init__(self) -> None:
        self.runs = 0

    async def run(self, single: Subject, caller: Caller, items: list[Any],
                  key_version: int | None = None, algorithm: str | None = None) -> BatchOutcome:
        self.runs += 1
        return BatchOutcome([{"data": {}} for _ in items], failed=0)


class EmptyBuckets:
    """Refuses the tenants in ``empty`` (as a bucket with no tokens); counts what it grants."""

    def __init__(self, *empty: str) -> None:
        self.empty = set(empty)
        self.taken: Counter[str] = Counter()
        self.grants: list[tuple[str, int]] = []
        self.refused: dict[str, asyncio.Event] = {tenant: asyncio.Event() for tenant in PLANS}

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        if tenant_id in self.empty:
            self.refused[tenant_id].set()
            raise RateLimited(1, 0.01)
        self.taken[tenant_id] += cost
        self.grants.append((tenant_id, cost))


class ChunkOutcomes:
    def __init__(self) -> None:
        self.finished: Counter[str] = Counter()

    def chunk_finished(self, outcome: str) -> None:
        self.finished[outcome] += 1

    def chunk_items(self, operation: str, items: int, failed: int) -> None:
        return None


class Worker:
    """A job runner and its stand-ins."""

    def __init__(self, tmp_path: Path, concurrency: int, *empty: str) -> None:
        self.chunks = ChunkQueue()
        self.streams = Streams(self.chunks)
        self.auth = Authenticator()
        self.buckets = EmptyBuckets(*empty)
        self.outcomes = ChunkOutcomes()
        self.batches = Batches()
        self.runner = JobRunner(
            cast(Any, self.streams), cast(Any, self.batches), cast(Any, self.auth), self.buckets,
            Settings(data_dir=tmp_path, audit=False), concurrency=concurrency,
            ack_wait=ACK_WAIT, metrics=self.outcomes)

    def submit(self, tenant: str, index: int, items: int,
               run: str | None = None) -> ChunkMessage:
        message = ChunkMessage(tenant, index, items, run)
        self.chunks.queue.put_nowait(message)
        return message




async def settled(message: ChunkMessage) -> tuple[str, float | None]:
    """How ``message`` left the runner (waits up to 10 s)."""
    return await asyncio.wait_for(asyncio.shield(message.settled), 10)
