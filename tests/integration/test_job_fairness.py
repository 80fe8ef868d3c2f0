"""A rate-limited tenant's job does not hold up other tenants' jobs.

The stack's "free" plan is held to 6 items/s with a burst of 12, so a free tenant's job
of 120 items needs about 20 s; its bucket holds the requests that submit it (one token
each), so that they do not compete with the job for tokens. Its chunks are queued before
an enterprise tenant's job; the enterprise job must still complete while the free job
has done less than half of its chunks (the workers' loops once all sat waiting for the
free tenant's tokens, and the enterprise job waited for most of the free job). The free
job then completes too, every item once and OK, and its tenant's token bucket was
charged exactly its items and the requests its client made: no tokens for chunks handed
back to wait their turn.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from pqkms.client import PqkmsClient
from schemas.algorithms import Plan
from schemas.jobs import JOB_RESULTS_STREAM, results_subject
from tests.support.jobs import job_run
from tests.support.stack import LocalStack
from worker.log_sink import FLUSH_SECONDS
from worker.services.rate_limit import KvRateLimiter

pytestmark = [pytest.mark.integration, pytest.mark.long]

FREE_RATE = 6
FREE_BURST = 12  # a key and ten chunks submitted at once
FREE_ITEMS = 120  # about 20 s at the free rate
FREE_CHUNK = 12  # ten chunks: more than the workers' four loops
ENTERPRISE_ITEMS = 40
ENTERPRISE_CHUNK = 20


@pytest.fixture(scope="module")
async def fairness_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack(Path(tmp_path_factory.mktemp("job-fairness")), extra_env={
        "PQKMS_FREE_RATE_PER_SECOND": str(FREE_RATE),
        "PQKMS_FREE_BURST": str(FREE_BURST),
    })
    try:
        await local.start(workers=2)  # two loops each: four chunks in flight
        yield local
    finally:
        local.stop()


def encrypt_items(count: int) -> list[dict[str, Any]]:
    return [{"plaintext": base64.b64encode(f"item-{n}".encode()).decode(),
             "reference": str(n)} for n in range(count)]


@dataclass(frozen=True)
class FreeJob:
    """The free tenant's job, watched through JetStream directly: asking the workers
    would cost the tenant tokens."""

    js: JetStreamContext
    tenant_id: str
    job_id: str
    run: str | None
    chunks: int

    async def chunks_done(self) -> int:
        subjects = results_subject(self.tenant_id, self.job_id, "*", self.run)
        info = await self.js.stream_info(JOB_RESULTS_STREAM, subjects_filter=subjects)
        return len(info.state.subjects or {})

    async def wait_until_done(self, timeout: float) -> None:
        for _ in range(int(timeout / 0.2)):
            if await self.chunks_done() == self.chunks:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{await self.chunks_done()} of {self.chunks} free chunks done")

    async def results(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for index in range(self.chunks):
            stored = await self.js.get_last_msg(
                JOB_RESULTS_STREAM, results_subject(self.tenant_id, self.job_id, index, self.run))
            assert stored.data is not None
            results.extend(orjson.loads(stored.data)["results"])
        return results


async def record_bucket(watcher: KeyValue.KeyWatcher,
                        writes: list[tuple[float, float]]) -> None:
    """Every state a token bucket is written in, as (tokens, at)."""
    try:
        async for entry in watcher:
            if entry is not None and entry.value:
                state = orjson.loads(entry.value)
                writes.append((float(state["tokens"]), float(state["at"])))
    finally:
        await watcher.stop()


def tokens_taken(writes: list[tuple[float, float]]) -> float:
    """What the writes took from a bucket that starts full (worker.services.rate_limit)."""
    taken, previous = 0.0, None
    for tokens, at in writes:
        if previous is None:
            available = float(FREE_BURST)
        else:
            available = min(float(FREE_BURST),
                            previous[0] + max(0.0, at - previous[1]) * FREE_RATE)
        taken += available - tokens
        previous = (tokens, at)
    return taken


def requests_answered_ok(stack: LocalStack, tenant_id: str) -> int:
    """The tenant's requests the workers answered OK (each took one token)."""
    count = 0
    for path in stack.worker_logs.values():
        for line in path.read_bytes().splitlines():
            if tenant_id.encode() not in line:
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if (event.get("event"), event.get("tenant_id"), event.get("outcome")) == (
                    "request", tenant_id, "OK"):
                count += 1
    return count


async def test_a_rate_limited_job_does_not_hold_up_other_tenants_jobs(
        fairness_stack: LocalStack) -> None:
    free_key = await fairness_stack.create_tenant(Plan.FREE)
    free_tenant = await fairness_stack.tenant_id(free_key)
    enterprise_key = await fairness_stack.tenant_with_key("Kyber768", Plan.ENTERPRISE)
    connection = await nats.connect(fairness_stack.nats_servers)
    js = connection.jetstream()
    writes: list[tuple[float, float]] = []
    buckets = await js.key_value(KvRateLimiter.BUCKET)
    watching = asyncio.create_task(record_bucket(
        await buckets.watch(f"t.{free_tenant}"), writes))  # before the tenant's first token
    try:
        async with await PqkmsClient.connect(fairness_stack.nats_url, free_key) as free, \
                await PqkmsClient.connect(fairness_stack.nats_url, enterprise_key) as enterprise:
            await free.generate_key("Kyber768")
            free_job_id = await free.submit_job(
                "kem.encrypt", encrypt_items(FREE_ITEMS), key_version=1,
                chunk_items=FREE_CHUNK)
            free_job = FreeJob(js, free_tenant, free_job_id,
                               await job_run(js, free_tenant, free_job_id),
                               chunks=FREE_ITEMS // FREE_CHUNK)

            # Queued behind every chunk of the free job.
            enterprise_job = await enterprise.submit_job(
                "kem.encrypt", encrypt_items(ENTERPRISE_ITEMS), key_version=1,
                chunk_items=ENTERPRISE_CHUNK)
            status = await enterprise.wait_for_job(enterprise_job, poll_seconds=0.1,
                                                   timeout=120)
            free_chunks_done = await free_job.chunks_done()
            assert (status["items_succeeded"], status["items_failed"]) == (
                ENTERPRISE_ITEMS, 0)
            assert free_chunks_done < free_job.chunks / 2, (
                f"the enterprise job waited for {free_chunks_done} of the free job's "
                f"{free_job.chunks} chunks")

            await free_job.wait_until_done(timeout=120)
            results = await free_job.results()
            assert [result["reference"] for result in results] == [
                str(n) for n in range(FREE_ITEMS)]
            assert all("data" in result for result in results)
            final = await free.job_status(free_job.job_id)
            assert (final["state"], final["items_done"], final["items_failed"]) == (
                "completed", FREE_ITEMS, 0)
    finally:
        await asyncio.sleep(3 * FLUSH_SECONDS)  # the workers' last log lines and writes
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await connection.close()
    # Every item once, and nothing for a chunk handed back unprocessed.
    expected = FREE_ITEMS + requests_answered_ok(fairness_stack, free_tenant)
    assert tokens_taken(writes) == pytest.approx(expected, abs=1e-6)
