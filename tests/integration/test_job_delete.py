"""``jobs.delete`` on real workers and a real nats-server: a finished job, a running job,
another tenant's job, and the same job id submitted again at once (inside JetStream's
de-duplication window)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from pqkms.client import PqkmsClient, PqkmsError
from schemas.algorithms import Plan
from schemas.jobs import (
    JOB_CHUNKS_STREAM,
    JOB_RESULTS_PREFIX,
    JOB_RESULTS_STREAM,
    JOBS_BUCKET,
    chunk_key,
    job_key,
    results_subject,
)
from schemas.subjects import Subject
from tests.support.jobs import job_run
from tests.support.stack import LocalStack, NatsCaller
from worker.jobs.streams import CONSUMER

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def delete_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack(Path(tmp_path_factory.mktemp("job-delete")))
    try:
        await local.start(workers=2)
        yield local
    finally:
        local.stop()


@pytest.fixture
async def api_key(delete_stack: LocalStack) -> str:
    return await delete_stack.create_tenant(Plan.ENTERPRISE)


@pytest.fixture
async def client(delete_stack: LocalStack, api_key: str) -> AsyncIterator[PqkmsClient]:
    async with await PqkmsClient.connect(delete_stack.nats_url, api_key) as pqkms:
        await pqkms.generate_key("Kyber768")
        yield pqkms


@pytest.fixture
async def js(delete_stack: LocalStack) -> AsyncIterator[JetStreamContext]:
    connection = await nats.connect(delete_stack.nats_url)
    yield connection.jetstream()
    await connection.close()


def encrypt_items(count: int) -> list[dict[str, Any]]:
    return [{"plaintext": base64.b64encode(f"item-{n}".encode()).decode(),
             "reference": str(n)} for n in range(count)]


async def subjects_of(js: JetStreamContext, stream: str, pattern: str) -> dict[str, int]:
    info = await js.stream_info(stream, subjects_filter=pattern)
    return dict(info.state.subjects or {})


async def left_of(js: JetStreamContext, tenant: str, job_id: str) -> dict[str, int]:
    """Whatever JetStream still holds of a job: results, queued chunks, bucket entries
    (the job's own entry counts while it is not deleted; a delete marker holds nothing)."""
    left = {
        **await subjects_of(js, JOB_RESULTS_STREAM, f"{JOB_RESULTS_PREFIX}.{tenant}.{job_id}.>"),
        **await subjects_of(js, JOB_CHUNKS_STREAM, f"pqkms.v1.jobs.chunks.{tenant}.{job_id}.>"),
        **await subjects_of(js, f"KV_{JOBS_BUCKET}", f"$KV.{JOBS_BUCKET}.{tenant}.{job_id}.>"),
    }
    try:
        await (await js.key_value(JOBS_BUCKET)).get(job_key(tenant, job_id))
        left[job_key(tenant, job_id)] = 1
    except KeyNotFoundError:
        pass
    return left


async def not_found(call: Any) -> str:
    with pytest.raises(PqkmsError) as raised:
        await call
    assert raised.value.code == "ERR_NOT_FOUND_001", raised.value
    return raised.value.message


async def all_results(client: PqkmsClient, job_id: str) -> list[dict[str, Any]]:
    return [result async for result in client.job_results(job_id)]


async def test_a_deleted_job_is_gone_and_its_id_runs_again_at_once(
        delete_stack: LocalStack, client: PqkmsClient, api_key: str,
        js: JetStreamContext) -> None:
    tenant = await delete_stack.tenant_id(api_key)
    job_id = await client.submit_job("kem.encrypt", encrypt_items(30), key_version=1,
                                     chunk_items=10)
    await client.wait_for_job(job_id, timeout=60)
    first_run = await job_run(js, tenant, job_id)
    assert first_run is not None and await left_of(js, tenant, job_id)

    assert await client.delete_job(job_id) == {"job_id": job_id, "deleted": True}
    assert await left_of(js, tenant, job_id) == {}
    assert await not_found(client.job_status(job_id)) == f"Job {job_id} not found"
    await not_found(client.chunk_results(job_id, 0))
    await not_found(client.delete_job(job_id))

    # The same id and items again, well inside the de-duplication window: a new run,
    # queued and run, not taken for the deleted run's chunks.
    assert await client.submit_job("kem.encrypt", encrypt_items(30), key_version=1,
                                   chunk_items=10, job_id=job_id) == job_id
    status = await client.wait_for_job(job_id, timeout=60)
    assert (status["items_succeeded"], status["items_failed"]) == (30, 0)
    assert await job_run(js, tenant, job_id) not in (None, first_run)
    results = await all_results(client, job_id)
    assert [result["reference"] for result in results] == [str(n) for n in range(30)]


async def test_deleting_a_running_job_drops_its_chunks_and_keeps_no_results(
        delete_stack: LocalStack, client: PqkmsClient, api_key: str,
        js: JetStreamContext) -> None:
    tenant = await delete_stack.tenant_id(api_key)
    job_id = await client.submit_job("kem.encrypt", encrypt_items(6000), key_version=1,
                                     chunk_items=20)
    for _ in range(600):
        if (await client.job_status(job_id))["chunks_done"] >= 2:
            break
        await asyncio.sleep(0.05)
    await client.delete_job(job_id)
    # Chunks running meanwhile finish (and find the job gone) before the consumer is idle.
    for _ in range(600):
        consumer = await js.consumer_info(JOB_CHUNKS_STREAM, CONSUMER)
        if consumer.num_ack_pending == 0 and consumer.num_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert await left_of(js, tenant, job_id) == {}
    await not_found(client.job_status(job_id))

    # The workers go on with the next job.
    other = await client.submit_job("kem.encrypt", encrypt_items(5), key_version=1)
    assert (await client.wait_for_job(other, timeout=60))["items_succeeded"] == 5


async def test_another_tenant_cannot_delete_a_job(
        delete_stack: LocalStack, client: PqkmsClient) -> None:
    job_id = await client.submit_job("kem.encrypt", encrypt_items(3), key_version=1)
    await client.wait_for_job(job_id, timeout=60)
    other_key = await delete_stack.create_tenant(Plan.ENTERPRISE)
    async with await PqkmsClient.connect(delete_stack.nats_url, other_key) as other:
        await not_found(other.delete_job(job_id))
    assert (await client.job_status(job_id))["state"] == "completed"
    assert len(await all_results(client, job_id)) == 3


async def test_a_delete_request_is_validated(delete_stack: LocalStack, api_key: str) -> None:
    connection = await nats.connect(delete_stack.nats_url)
    try:
        call = NatsCaller(connection, api_key)
        for body in ({}, {"job_id": "a b"}, {"job_id": "x" * 65}, {"job_id": 7},
                     {"job_id": "ok", "chunk_index": 0}):
            reply = await call(Subject.JOBS_DELETE, body)
            assert reply.code == "ERR_INVALID_001", (body, reply.body)
        unauthenticated = await NatsCaller(connection, "pqk_wrong")(Subject.JOBS_DELETE,
                                                                     {"job_id": "ok"})
        assert unauthenticated.code == "ERR_AUTH_001"
    finally:
        await connection.close()


async def test_a_delete_of_an_unknown_job_removes_what_an_earlier_delete_left(
        delete_stack: LocalStack, client: PqkmsClient, api_key: str,
        js: JetStreamContext) -> None:
    # Results a chunk published while its job was deleted, whose worker died before it
    # removed them (or a delete that failed after the job's entry went).
    tenant = await delete_stack.tenant_id(api_key)
    await js.publish(results_subject(tenant, "left-over", 0, "0123456789abcdef"), b"{}",
                     stream=JOB_RESULTS_STREAM)
    await not_found(client.delete_job("left-over"))
    assert await left_of(js, tenant, "left-over") == {}


async def test_a_late_submit_of_a_deleted_run_does_not_block_the_id(
        delete_stack: LocalStack, client: PqkmsClient, api_key: str,
        js: JetStreamContext) -> None:
    tenant = await delete_stack.tenant_id(api_key)
    job_id = await client.submit_job("kem.encrypt", encrypt_items(2), key_version=1)
    await client.wait_for_job(job_id, timeout=60)
    old_run = await job_run(js, tenant, job_id)
    await client.delete_job(job_id)
    # What a submit of the deleted run that raced the delete leaves: its chunk's claim.
    bucket = await js.key_value(JOBS_BUCKET)
    await bucket.put(chunk_key(tenant, job_id, 0, old_run), b'{"digest": "of other items"}')

    await client.submit_job("kem.encrypt", encrypt_items(3), key_version=1, job_id=job_id)
    assert (await client.wait_for_job(job_id, timeout=60))["items_succeeded"] == 3
