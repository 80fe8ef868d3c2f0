"""Bursts of 1 MiB requests: nothing is cut off as a slow consumer, nothing is lost.

nats-server holds what a connection has not read yet up to its ``max_pending`` and then
closes it, losing every request in flight on it. Two hundred 1 MiB encryptions at
once are 280 MB of replies: the bridge and the Python client keep theirs in flight within a
budget (schemas/reply_budget.py), which holds even under nats-server's default
``max_pending`` (64 MB); the workers, which cannot hold back what is sent to them, rely
on the larger ``max_pending`` that `pqkms up` and the compose files set.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import orjson
import pytest

from pqkms.client import PqkmsClient
from tests.support.stack import LocalStack
from worker.config import Settings

# serial: these bursts take the whole machine; beside another test file (pytest-xdist)
# a request can wait past the workers' deadline, which is not what is tested here.
pytestmark = [pytest.mark.integration, pytest.mark.serial]

BURST = 200
PLAINTEXT = os.urandom(1024 * 1024)
BODY = orjson.dumps({"plaintext": base64.b64encode(PLAINTEXT).decode(), "key_version": 1,
                     "algorithm": "Kyber768"})
NATS_DEFAULT_MAX_PENDING = 64 * 1024 * 1024


async def started(root: Path, max_pending: int | None) -> tuple[LocalStack, str]:
    stack = LocalStack(root, nats_max_payload=Settings().nats_max_payload(),
                       nats_max_pending=max_pending)
    try:
        await stack.start(workers=2, bridge=True)
        api_key = await stack.tenant_with_key()
    except BaseException:
        stack.stop()
        raise
    return stack, api_key


@pytest.fixture(scope="module")
async def default_pending(
        tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[LocalStack, str]]:
    stack, api_key = await started(Path(tmp_path_factory.mktemp("pending64")),
                                   NATS_DEFAULT_MAX_PENDING)
    try:
        yield stack, api_key
    finally:
        stack.stop()


def slow_consumers(stack: LocalStack) -> list[str]:
    return [line for line in (stack.root / "nats.log").read_text().splitlines()
            if "Slow Consumer" in line]


async def test_a_burst_through_the_bridge_is_answered_whole(
        default_pending: tuple[LocalStack, str]) -> None:
    stack, api_key = default_pending
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=stack.http_url, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=BURST)) as http:
        replies = await asyncio.gather(*[http.post("/api/v1/kem/encrypt", content=BODY)
                                         for _ in range(BURST)])
    assert [reply.status_code for reply in replies] == [200] * BURST
    assert slow_consumers(stack) == []


async def test_a_burst_from_the_python_client_is_answered_whole(
        default_pending: tuple[LocalStack, str]) -> None:
    stack, api_key = default_pending
    async with await PqkmsClient.connect(stack.nats_url, api_key) as client:
        results = await asyncio.gather(*[client.encrypt(PLAINTEXT, 1) for _ in range(BURST)])
        opened = await client.decrypt(results[-1]["ciphertext"], 1)
    assert all("ciphertext" in result for result in results)
    assert opened == PLAINTEXT
    assert slow_consumers(stack) == []


async def test_bursts_from_many_connections_do_not_cut_the_workers_off(
        tmp_path: Path) -> None:
    # Ten plain nats-py connections, thirty 1 MiB requests each, all at once: more than
    # 64 MB waits for each worker, within the max_pending `pqkms up` sets.
    stack, api_key = await started(tmp_path / "stack", None)
    try:
        async def thirty() -> list[bytes]:
            connection = await nats.connect(stack.nats_url, pending_size=512 * 1024 * 1024)
            try:
                replies = await asyncio.gather(*[
                    connection.request("pqkms.v1.kem.encrypt", BODY, timeout=120,
                                       headers={"X-API-Key": api_key})
                    for _ in range(30)])
                return [reply.data for reply in replies]
            finally:
                await connection.close()

        answered = [data for part in await asyncio.gather(*[thirty() for _ in range(10)])
                    for data in part]
        assert all("data" in orjson.loads(data) for data in answered)
        assert len(answered) == 300
        assert slow_consumers(stack) == []
    finally:
        stack.stop()


async def test_many_chunk_results_read_at_once_are_answered_whole(
        default_pending: tuple[LocalStack, str]) -> None:
    # 80 chunks' results of 500 encryptions (≈ 1.4 MB each) asked for all at once: a job
    # chunk's results are charged the whole message limit, whatever the request's size.
    stack, api_key = default_pending
    items = [{"plaintext": base64.b64encode(PLAINTEXT[:1024]).decode()}] * 40_000
    async with await PqkmsClient.connect(stack.nats_url, api_key) as client:
        job_id = await client.submit_job("kem.encrypt", items, key_version=1)
        status = await client.wait_for_job(job_id, timeout=300)
        chunks = status["total_chunks"]
        results = await asyncio.gather(*[client.chunk_results(job_id, index)
                                         for index in range(chunks)])
    assert sum(part["succeeded"] for part in results) == len(items)
    assert slow_consumers(stack) == []
