"""Requests at nats-server's message limit: as `pqkms up` sets it (the workers' own), and
under it (nats-server's own default, as an existing NATS deployment may keep).

nats-server closes a connection that sends a message over its ``max_payload``, payload
and headers together, and every request in flight on it is lost. A body the bridge
accepts (up to that limit) or a payload the Python client builds may fit by itself and
not with the headers: such a request gets its own clear error, and the connection and
the other requests on it carry on. Under the workers' limit, replies, batches and job
chunks are kept within the bus's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.aio.client
import orjson
import pytest
from nats.errors import MaxPayloadError

from pqkms.client import PqkmsClient, PqkmsError
from schemas.nats_message import counted_size
from tests.support.stack import LocalStack
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.long]

MESSAGE_LIMIT = Settings().nats_max_payload()
ENCRYPT = {"plaintext": "aGVsbG8=", "key_version": 1, "algorithm": "Kyber768"}


@contextlib.asynccontextmanager
async def running(root: Path, max_payload: int) -> AsyncIterator[LocalStack]:
    """One worker and the bridge, nats-server's messages limited to ``max_payload``."""
    stack = LocalStack(root, nats_max_payload=max_payload)
    try:
        await stack.start(workers=1, bridge=True)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
async def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with running(Path(tmp_path_factory.mktemp("limit")), MESSAGE_LIMIT) as stack:
        yield stack


@pytest.fixture(scope="module")
async def api_key(limited_stack: LocalStack) -> str:
    return await limited_stack.tenant_with_key()


def spaced_to(size: int) -> bytes:
    """The encrypt body, spaced out to ``size`` bytes."""
    compact = orjson.dumps(ENCRYPT)
    return compact[:1] + b" " * (size - len(compact)) + compact[1:]


@pytest.mark.parametrize("short_of_the_limit", [0, 10, 100, 400, 4096])
async def test_a_body_at_the_limit_fails_alone_over_http(
        limited_stack: LocalStack, api_key: str, short_of_the_limit: int) -> None:
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=limited_stack.http_url, headers=headers,
                                 timeout=30) as http:
        big = http.post("/api/v1/kem/encrypt",
                        content=spaced_to(MESSAGE_LIMIT - short_of_the_limit))
        others = [http.post("/api/v1/kem/encrypt", json=ENCRYPT) for _ in range(20)]
        answered = await asyncio.gather(big, *others)
        assert [reply.status_code for reply in answered[1:]] == [200] * 20
        reply = answered[0]
        if reply.status_code != 200:
            assert reply.status_code == 400
            assert reply.json()["error"]["code"] == "ERR_INVALID_001"
            assert "larger than the message bus accepts" in reply.json()["error"]["message"]
        assert (await http.post("/api/v1/kem/encrypt", json=ENCRYPT)).status_code == 200


async def test_the_client_refuses_a_message_over_the_limit_with_its_headers(
        limited_stack: LocalStack, api_key: str) -> None:
    async with await PqkmsClient.connect(limited_stack.nats_url, api_key) as client:
        # orjson writes the body compact: a long reference fills it to just under the
        # limit, which the headers then carry over.
        filler = MESSAGE_LIMIT - 50 - len(orjson.dumps({**ENCRYPT, "reference": ""}))
        others = [asyncio.ensure_future(client.encrypt(b"hello", 1)) for _ in range(20)]
        with pytest.raises(MaxPayloadError):
            await client.request("pqkms.v1.kem.encrypt", {**ENCRYPT, "reference": "r" * filler})
        assert all("ciphertext" in result for result in await asyncio.gather(*others))
        assert "ciphertext" in await client.encrypt(b"hello", 1)


async def test_a_key_list_over_the_limit_says_to_narrow_it(limited_stack: LocalStack) -> None:
    # The contract's key list has no pages: 600 versions of ML-DSA-65 (public keys of
    # 2.6 KB in base64) do not fit one message.
    api_key = await limited_stack.tenant_with_key("Dilithium3")
    async with await PqkmsClient.connect(limited_stack.nats_url, api_key) as client:
        for _ in range(600):
            await client.request("pqkms.v1.kms.keys.rotate", {"algorithm": "Dilithium3"})
        with pytest.raises(PqkmsError, match="narrowed by status") as too_long:
            await client.request("pqkms.v1.kms.keys.list", {"algorithm": "Dilithium3"})
        assert too_long.value.code == "ERR_INVALID_001"
        active = await client.request("pqkms.v1.kms.keys.list",
                                      {"algorithm": "Dilithium3", "status": "active"})
    assert active["total"] == 1
    async with httpx.AsyncClient(base_url=limited_stack.http_url, timeout=30,
                                 headers={"X-API-Key": api_key}) as http:
        reply = await http.get("/api/v1/kms/keys", params={"algorithm": "Dilithium3"})
    assert reply.status_code == 400
    assert "over the" in reply.json()["error"]["message"]


# -- a message bus with a smaller limit than the workers' (nats-server's own default) ------

SMALL_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
async def small_bus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with running(Path(tmp_path_factory.mktemp("small")), SMALL_LIMIT) as stack:
        yield stack


@pytest.fixture(scope="module")
async def small_bus_key(small_bus: LocalStack) -> str:
    return await small_bus.tenant_with_key()


def test_the_worker_says_the_bus_limit_is_under_its_own(small_bus: LocalStack) -> None:
    (log,) = small_bus.worker_logs.values()
    warnings = [orjson.loads(line) for line in log.read_bytes().splitlines()
                if b"nats_max_payload_too_small" in line]
    assert warnings and warnings[0]["server_max_payload"] == SMALL_LIMIT


async def reply_sizes(connection: nats.aio.client.Client, api_key: str,
                      sizes: list[int]) -> list[tuple[int, dict[str, Any]]]:
    """Each encrypt's reply size (with its headers) and envelope, plaintexts of ``sizes``."""
    answered = []
    for size in sizes:
        body = orjson.dumps({**ENCRYPT, "plaintext": base64.b64encode(bytes(size)).decode()})
        reply = await connection.request("pqkms.v1.kem.encrypt", body, timeout=30,
                                         headers={"X-API-Key": api_key})
        answered.append((counted_size(reply.data, reply.headers), orjson.loads(reply.data)))
    return answered


async def test_replies_up_to_the_bus_limit_are_sent_and_larger_ones_refused(
        small_bus: LocalStack, small_bus_key: str) -> None:
    connection = await nats.connect(small_bus.nats_url)
    try:
        # Where a reply reaches the limit: every size of reply across the last bytes
        # before it (3 bytes of plaintext are 4 of base64), headers included.
        (small, _), = await reply_sizes(connection, small_bus_key, [0])
        edge = (SMALL_LIMIT - small) * 3 // 4
        async with await PqkmsClient.connect(small_bus.nats_url, small_bus_key) as client:
            others = [asyncio.ensure_future(client.encrypt(b"hello", 1)) for _ in range(20)]
            answered = await reply_sizes(connection, small_bus_key,
                                         list(range(edge - 120, edge + 30)))
            assert all("ciphertext" in result for result in await asyncio.gather(*others))
    finally:
        await connection.close()
    sent = [size for size, envelope in answered if "data" in envelope]
    refused = [envelope["error"] for _, envelope in answered if "error" in envelope]
    assert sent and refused and max(sent) <= SMALL_LIMIT
    assert {error["code"] for error in refused} == {"ERR_INVALID_001"}
    assert all(f"over the {SMALL_LIMIT}-byte limit of one message" in error["message"]
               for error in refused)
    (log,) = small_bus.worker_logs.values()
    assert b"direct_reply_failed" not in log.read_bytes()


async def test_batches_and_jobs_are_cut_for_the_bus_limit(
        small_bus: LocalStack, small_bus_key: str) -> None:
    items = [{"plaintext": base64.b64encode(bytes(1024)).decode(), "reference": str(n)}
             for n in range(400)]
    async with await PqkmsClient.connect(small_bus.nats_url, small_bus_key) as client:
        # A batch of 400 fits the workers' own limit, request and reply (≈ 1.2 MB), and
        # its request fits the bus's; its reply would not.
        with pytest.raises(PqkmsError, match="the batch's reply could reach") as refused:
            await client.request("pqkms.v1.kem.encrypt.batch",
                                 {"items": items, "key_version": 1})
        assert refused.value.code == "ERR_INVALID_001"
        results = await client.batch("kem.encrypt", items, key_version=1)
        assert [result["reference"] for result in results if "data" in result] == [
            str(n) for n in range(400)]
        job_id = await client.submit_job("kem.encrypt", items, key_version=1,
                                         chunk_items=400)
        status = await client.wait_for_job(job_id, timeout=60)
        assert (status["items_succeeded"], status["items_failed"]) == (400, 0)
        assert status["total_chunks"] > 1
