"""Durable jobs on JetStream: a killed worker, a restarted nats-server, re-submits.

The killed-worker job has ``PQKMS_JOB_TEST_ITEMS`` items (default 100 000, about 40 s
on two cores). These tests run their own stack: they kill workers and restart
nats-server, which the session's shared stack must not see.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pqkms.client import PqkmsClient, PqkmsError
from schemas.algorithms import Plan
from schemas.jobs import JOB_RESULTS_PREFIX, JOB_RESULTS_STREAM
from schemas.subjects import HEADER_API_KEY, Subject
from tests.support.stack import LocalStack
from worker.bulk_config import BulkSettings
from worker.config import Settings
from worker.jobs.streams import JobStreams

pytestmark = [pytest.mark.integration, pytest.mark.long]

ITEMS = int(os.environ.get("PQKMS_JOB_TEST_ITEMS", "100000"))
CHUNK = 500
# One message's limit in the default configuration (docs/jobs.md).
MESSAGE_LIMIT = Settings().nats_max_payload()


@pytest.fixture(scope="module")
async def job_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    # nats-server's message limit as `pqkms up` sets it: the workers' own.
    local = LocalStack(Path(tmp_path_factory.mktemp("jobs")),
                       extra_env={"PQKMS_JOB_ACK_WAIT_SECONDS": "2"},
                       nats_max_payload=MESSAGE_LIMIT)
    try:
        await local.start(workers=2)
        yield local
    finally:
        local.stop()


@pytest.fixture
async def client(job_stack: LocalStack) -> AsyncIterator[PqkmsClient]:
    api_key = await job_stack.create_tenant(Plan.ENTERPRISE)
    async with await PqkmsClient.connect(job_stack.nats_url, api_key) as pqkms:
        await pqkms.generate_key("Kyber768")
        yield pqkms


def plaintext(n: int) -> bytes:
    return f"item-{n}".encode()


def encrypt_items(count: int) -> list[dict[str, Any]]:
    return [{"plaintext": base64.b64encode(plaintext(n)).decode(), "reference": str(n)}
            for n in range(count)]


async def wait_for_progress(client: PqkmsClient, job_id: str, chunks: int) -> None:
    for _ in range(6000):
        if (await client.job_status(job_id))["chunks_done"] >= chunks:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {chunks} chunks done")


async def all_results(client: PqkmsClient, job_id: str) -> list[dict[str, Any]]:
    return [result async for result in client.job_results(job_id)]


def assert_each_item_once(results: list[dict[str, Any]], count: int) -> None:
    assert len(results) == count
    assert [result["reference"] for result in results] == [str(n) for n in range(count)]
    assert all("data" in result for result in results), next(
        r for r in results if "data" not in r)


async def assert_every_ciphertext_decrypts(client: PqkmsClient,
                                           results: list[dict[str, Any]]) -> None:
    items = [{"ciphertext": r["data"]["ciphertext"], "reference": r["reference"]}
             for r in results]
    job_id = await client.submit_job("kem.decrypt", items, key_version=1, chunk_items=CHUNK)
    status = await client.wait_for_job(job_id, timeout=240)
    assert status["items_failed"] == 0 and status["items_done"] == len(items)
    opened = await all_results(client, job_id)
    assert [base64.b64decode(r["data"]["plaintext"]) for r in opened] == [
        plaintext(int(r["reference"])) for r in results]


async def test_job_survives_a_killed_worker(job_stack: LocalStack, client: PqkmsClient) -> None:
    job_id = await client.submit_job("kem.encrypt", encrypt_items(ITEMS), key_version=1,
                                     chunk_items=CHUNK)
    total_chunks = -(-ITEMS // CHUNK)
    await wait_for_progress(client, job_id, max(1, total_chunks // 5))
    victim = job_stack.workers[0]
    victim.kill()  # SIGKILL: no chance to hand its chunks back
    victim.wait()
    status = await client.wait_for_job(job_id, timeout=240)
    assert status["chunks_done"] == status["total_chunks"] == total_chunks
    assert (status["items_done"], status["items_failed"]) == (ITEMS, 0)
    results = await all_results(client, job_id)
    assert_each_item_once(results, ITEMS)
    await assert_every_ciphertext_decrypts(client, results)
    job_stack.workers.remove(victim)
    job_stack.start_worker()
    await job_stack.wait_for_workers(2)


async def test_job_survives_a_nats_server_restart(job_stack: LocalStack,
                                                  client: PqkmsClient) -> None:
    count = min(ITEMS, 20_000)
    job_id = await client.submit_job("kem.encrypt", encrypt_items(count), key_version=1,
                                     chunk_items=CHUNK)
    await wait_for_progress(client, job_id, 2)
    job_stack.stop_nats()  # the JetStream file store stays in place
    await asyncio.sleep(1.0)
    job_stack.start_nats()
    status = await client.wait_for_job(job_id, timeout=240)
    assert (status["items_done"], status["items_failed"]) == (count, 0)
    results = await all_results(client, job_id)
    assert_each_item_once(results, count)
    assert all(job_stack.workers[n].poll() is None for n in range(2))


async def test_resubmitting_a_finished_job_adds_no_results(client: PqkmsClient) -> None:
    items = encrypt_items(2000)
    job_id = await client.submit_job("kem.encrypt", items, key_version=1, chunk_items=CHUNK)
    await client.wait_for_job(job_id, timeout=120)
    first = await all_results(client, job_id)

    chunks = [items[n:n + CHUNK] for n in range(0, len(items), CHUNK)]
    for index, chunk in enumerate(chunks):
        again = await client.submit_chunk(job_id, "kem.encrypt", index, len(chunks), chunk,
                                          key_version=1)
        assert (again["queued"], again["duplicate"]) == (False, True)
    await asyncio.sleep(1.0)
    status = await client.job_status(job_id)
    assert (status["chunks_done"], status["items_done"]) == (4, 2000)
    assert await all_results(client, job_id) == first  # the very same results, once each


def _b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


async def test_a_job_id_used_again_for_other_items_is_refused(client: PqkmsClient) -> None:
    """A nightly job run again under the same id never gets the night before's results
    (a review found them answered as a duplicate, the new items never run)."""
    job_id = uuid.uuid4().hex
    night_one = [{"plaintext": _b64(b"night one"), "reference": "r1"}]
    await client.submit_job("kem.encrypt", night_one, job_id=job_id, key_version=1)
    await client.wait_for_job(job_id, timeout=60)
    first = await all_results(client, job_id)

    night_two = [{"plaintext": _b64(b"night two"), "reference": "r1"}]
    with pytest.raises(PqkmsError, match=f"chunk 0 of job {job_id} was submitted before "
                                         "with other items") as refused:
        await client.submit_job("kem.encrypt", night_two, job_id=job_id, key_version=1)
    assert refused.value.code == "ERR_INVALID_001"
    await client.rotate_key("Kyber768")
    with pytest.raises(PqkmsError, match="was submitted before"):
        await client.submit_job("kem.encrypt", night_one, job_id=job_id, key_version=2)

    # The same items (in any key order) are the same chunk: a duplicate, as before.
    same = [{"reference": "r1", "plaintext": _b64(b"night one")}]
    again = await client.submit_chunk(job_id, "kem.encrypt", 0, 1, same, key_version=1)
    assert (again["queued"], again["duplicate"]) == (False, True)
    assert await all_results(client, job_id) == first


async def test_a_job_belongs_to_its_tenant(job_stack: LocalStack, client: PqkmsClient) -> None:
    job_id = await client.submit_job("kem.encrypt", encrypt_items(10), key_version=1)
    await client.wait_for_job(job_id, timeout=60)
    other_key = await job_stack.create_tenant(Plan.ENTERPRISE)
    async with await PqkmsClient.connect(job_stack.nats_url, other_key) as other:
        for call in (other.job_status(job_id), other.chunk_results(job_id, 0)):
            with pytest.raises(PqkmsError) as raised:
                await call
            assert raised.value.code == "ERR_NOT_FOUND_001"
        # The same id is a different job for another tenant: its own items, its own results.
        await other.generate_key("Kyber768")
        await other.submit_job("kem.encrypt", encrypt_items(3), job_id=job_id, key_version=1)
        status = await other.wait_for_job(job_id, timeout=60)
        assert status["items_done"] == 3
    assert (await client.job_status(job_id))["items_done"] == 10


async def test_a_job_with_bad_items_completes_with_item_errors(client: PqkmsClient) -> None:
    items = [{"plaintext": "AA=="}, {"plaintext": "bad"}, {"plaintext": "AA==", "key_version": 7}]
    job_id = await client.submit_job("kem.encrypt", items, key_version=1)
    status = await client.wait_for_job(job_id, timeout=60)
    assert (status["items_succeeded"], status["items_failed"]) == (1, 2)
    results = await all_results(client, job_id)
    assert [sorted(r) for r in results] == [["data"], ["error"], ["error"]]
    assert results[2]["error"]["code"] == "ERR_KEM_005"


async def test_submit_is_validated(client: PqkmsClient) -> None:
    job_id = uuid.uuid4().hex
    with pytest.raises(PqkmsError, match="chunk_index must be less than total_chunks"):
        await client.submit_chunk(job_id, "kem.encrypt", 2, 2, [{"plaintext": "AA=="}])
    await client.submit_chunk(job_id, "kem.encrypt", 0, 2, [{"plaintext": "AA=="}],
                              key_version=1)
    with pytest.raises(PqkmsError, match=r"was submitted with operation kem\.encrypt and 2"):
        await client.submit_chunk(job_id, "kem.decrypt", 1, 2, [{"ciphertext": "AA=="}])
    with pytest.raises(PqkmsError, match="job_id"):
        await client.submit_chunk("no spaces", "kem.encrypt", 0, 1, [{"plaintext": "AA=="}])
    # No items, no job: the client says so instead of returning an id nothing knows.
    with pytest.raises(ValueError, match="a job needs at least one item"):
        await client.submit_job("kem.encrypt", [], key_version=1, job_id=job_id + "e")
    with pytest.raises(PqkmsError) as raised:
        await client.job_status(job_id + "e")
    assert raised.value.code == "ERR_NOT_FOUND_001"


@pytest.mark.parametrize("spacing", [0, 1000, MESSAGE_LIMIT - 200],
                         ids=["compact", "spaced", "spaced-to-the-limit"])
async def test_a_chunk_runs_as_submitted_however_its_json_is_spaced(
        job_stack: LocalStack, spacing: int) -> None:
    # The chunk message is the submit's own JSON; one spaced out so far that the chunk's
    # headers would not fit beside it in one message is written out compact instead.
    api_key = await job_stack.create_tenant(Plan.ENTERPRISE)
    async with await PqkmsClient.connect(job_stack.nats_url, api_key) as owner:
        await owner.generate_key("Kyber768")
        job_id = uuid.uuid4().hex
        fields = {"key_version": 1, "items": encrypt_items(3), "total_chunks": 1,
                  "chunk_index": 0, "operation": "kem.encrypt", "job_id": job_id}
        compact = orjson.dumps(fields)
        body = compact[:1] + b" " * max(0, spacing - len(compact)) + compact[1:]
        connection = await nats.connect(job_stack.nats_url)
        try:
            reply = await connection.request(Subject.JOBS_SUBMIT.value, body, timeout=30,
                                             headers={HEADER_API_KEY: api_key})
        finally:
            await connection.close()
        assert orjson.loads(reply.data)["data"]["queued"] is True
        status = await owner.wait_for_job(job_id, timeout=60)
        assert (status["items_succeeded"], status["items_failed"]) == (3, 0)
        results = await all_results(owner, job_id)
        assert_each_item_once(results, 3)
        await assert_every_ciphertext_decrypts(owner, results)


async def finished_job(client: PqkmsClient, items: int, chunk_items: int) -> str:
    job_id = await client.submit_job("kem.encrypt", encrypt_items(items), key_version=1,
                                     chunk_items=chunk_items)
    await client.wait_for_job(job_id, timeout=60)
    return job_id


async def results_subject_of(js: JetStreamContext, job_id: str, index: int) -> str:
    """The stored results' subject of one chunk (its tenant is the caller's)."""
    info = await js.stream_info(JOB_RESULTS_STREAM,
                                subjects_filter=f"{JOB_RESULTS_PREFIX}.*.{job_id}.*.{index}")
    (subject,) = info.state.subjects or {}
    return subject


async def tenant_and_run_of(js: JetStreamContext, job_id: str) -> tuple[str, str]:
    """The tenant and run of a job with results for chunk 0: its results' subject has
    both (``….<tenant>.<job>.<run>.<n>``)."""
    tenant, _, run, _ = (await results_subject_of(js, job_id, 0)).split(".")[-4:]
    return tenant, run


async def test_chunk_results_are_the_stored_results_read_directly(
        job_stack: LocalStack, client: PqkmsClient) -> None:
    job_id = await finished_job(client, 30, chunk_items=10)
    connection = await nats.connect(job_stack.nats_url)
    try:
        js = connection.jetstream()
        assert (await js.stream_info(JOB_RESULTS_STREAM)).config.allow_direct
        stored = await js.get_last_msg(JOB_RESULTS_STREAM, await results_subject_of(js, job_id, 1))
        assert stored.data is not None
        assert await client.chunk_results(job_id, 1) == orjson.loads(stored.data)
    finally:
        await connection.close()


async def test_has_results_counts_the_chunk_subject_only(
        job_stack: LocalStack, client: PqkmsClient) -> None:
    # Chunks 0-10 of one job: chunk 1 must not be taken for chunk 10's prefix, nor the
    # tenant's job for another tenant's job of the same id.
    job_id = await finished_job(client, 11, chunk_items=1)
    connection = await nats.connect(job_stack.nats_url)
    try:
        streams = JobStreams(lambda: connection, BulkSettings())
        tenant, run = await tenant_and_run_of(connection.jetstream(), job_id)
        assert all([await streams.has_results(tenant, job_id, n, run) for n in range(11)])
        assert not await streams.has_results(tenant, job_id, 11, run)
        assert not await streams.has_results(tenant, job_id, 1, run + "x")
        assert not await streams.has_results(tenant, job_id, 1, None)
        assert not await streams.has_results(tenant, job_id + "x", 1, run)
        assert not await streams.has_results("another-tenant", job_id, 1, run)
    finally:
        await connection.close()


async def test_results_are_read_from_a_stream_without_direct_get(
        job_stack: LocalStack, client: PqkmsClient) -> None:
    job_id = await client.submit_job("kem.encrypt", encrypt_items(5), key_version=1)
    await client.wait_for_job(job_id, timeout=60)
    first = await all_results(client, job_id)
    connection = await nats.connect(job_stack.nats_url)
    js = connection.jetstream()
    config = (await js.stream_info(JOB_RESULTS_STREAM)).config
    try:
        config.allow_direct = False
        await js.update_stream(config)
        assert await all_results(client, job_id) == first
        # A chunk without results is not found on this path either.
        streams = JobStreams(lambda: connection, BulkSettings())
        tenant, run = await tenant_and_run_of(js, job_id)
        with pytest.raises(NotFoundError):
            await streams.stored_results(tenant, job_id, 1, run)
        with pytest.raises(PqkmsError) as raised:
            await client.chunk_results(job_id, 1)  # a chunk the job does not have
        assert raised.value.code == "ERR_INVALID_001"
        assert raised.value.message == (
            f"Validation failed: chunk_index must be less than total_chunks (1) of job {job_id}")
    finally:
        config.allow_direct = True
        await js.update_stream(config)
        await connection.close()



async def test_results_read_ahead_keep_the_submit_order(client: PqkmsClient) -> None:
    job_id = await client.submit_job("kem.encrypt", encrypt_items(60), key_version=1,
                                     chunk_items=7)
    await client.wait_for_job(job_id, timeout=60)
    one_at_a_time = [r async for r in client.job_results(job_id, read_ahead=0)]
    assert_each_item_once(one_at_a_time, 60)
    for read_ahead in (-1, 1, 2, 20):
        assert [r async for r in client.job_results(job_id, read_ahead=read_ahead)] == (
            one_at_a_time)
    assert [r async for r in client.job_results(job_id, start_chunk=8)] == one_at_a_time[56:]


async def test_stopping_early_leaves_no_read_running(client: PqkmsClient) -> None:
    job_id = await client.submit_job("kem.encrypt", encrypt_items(40), key_version=1,
                                     chunk_items=5)
    await client.wait_for_job(job_id, timeout=60)
    before = asyncio.all_tasks()
    results = client.job_results(job_id, read_ahead=4)
    first = await anext(results)
    assert first["reference"] == "0"
    assert len(asyncio.all_tasks() - before) <= 4  # the chunks read ahead, unless done
    await results.aclose()
    assert asyncio.all_tasks() - before == set()
