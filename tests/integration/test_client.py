"""The Python client (pqkms.client) against the real stack, and its batch splitting."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pqkms.client import (
    DEFAULT_MESSAGE_LIMIT,
    ItemTooLargeError,
    PqkmsClient,
    PqkmsError,
    SyncPqkmsClient,
    split_items,
)
from schemas.algorithms import Plan
from tests.support.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.long]


def test_split_items_respects_count_request_and_reply_limits() -> None:
    small = [{"plaintext": "AA=="}] * 2500
    groups = split_items("kem.encrypt", small, max_items=1000)
    assert sum(map(len, groups)) == 2500
    # ~1.6 KB of reply per small encryption: the reply bound cuts before 1000 items.
    assert all(len(group) < 1000 for group in groups) and len(groups) == 3
    big = [{"plaintext": base64.b64encode(b"x" * 600_000).decode()}] * 3
    assert [len(group) for group in split_items("kem.encrypt", big)] == [1, 1, 1]
    verify = [{"message": "AA==", "signature": "AA=="}] * 1500
    assert [len(g) for g in split_items("signature.verify", verify)] == [1000, 500]
    assert DEFAULT_MESSAGE_LIMIT == 1463637


def plaintext_item(size: int) -> dict[str, Any]:
    return {"plaintext": base64.b64encode(b"p" * size).decode()}


ONE_MIB = 1024 * 1024


def test_split_items_refuses_an_item_that_cannot_fit_alone() -> None:
    items = [plaintext_item(1), plaintext_item(1_100_000), plaintext_item(1)]
    with pytest.raises(ValueError, match=r"item 1 cannot fit in one message") as raised:
        split_items("kem.encrypt", items)
    assert isinstance(raised.value, ItemTooLargeError)
    assert raised.value.index == 1 and raised.value.size > 1_100_000 * 4 // 3
    assert raised.value.limit == DEFAULT_MESSAGE_LIMIT
    # At the per-item limit, and a little over it (the worker's own per-item error), an
    # item still fits in a batch.
    at_limit = [plaintext_item(ONE_MIB), plaintext_item(ONE_MIB + 4096), plaintext_item(1)]
    assert [len(group) for group in split_items("kem.encrypt", at_limit)] == [1, 2]


async def test_an_item_too_large_for_one_message_is_refused_before_sending(
        stack: LocalStack, api_key: str) -> None:
    items = [plaintext_item(1), plaintext_item(1_100_000), plaintext_item(1)]
    async with await PqkmsClient.connect(stack.nats_url, api_key) as client:
        await client.generate_key("Kyber768")
        with pytest.raises(ItemTooLargeError, match="item 1 "):
            await client.batch("kem.encrypt", items, key_version=1)
        with pytest.raises(ItemTooLargeError, match="item 1 "):
            await client.submit_job("kem.encrypt", items, job_id="too-large", key_version=1)
        with pytest.raises(PqkmsError) as unknown:  # no chunk of it was queued
            await client.job_status("too-large")
        assert unknown.value.code == "ERR_NOT_FOUND_001"

        results = await client.batch("kem.encrypt", [
            plaintext_item(ONE_MIB), plaintext_item(ONE_MIB + 4096)], key_version=1)
        assert base64.b64decode(results[0]["data"]["ciphertext"])
        assert results[1]["error"]["code"] == "ERR_INVALID_001"


async def test_sync_job_results_yields_before_the_whole_job_is_read(
        stack: LocalStack, api_key: str) -> None:
    last_chunk_read = threading.Event()

    def use() -> None:
        with SyncPqkmsClient(stack.nats_url, api_key) as client:
            client.generate_key("Kyber768")
            job_id = client.submit_job("kem.encrypt", [plaintext_item(n) for n in range(6)],
                                       chunk_items=2, key_version=1)
            client.wait_for_job(job_id, timeout=60)
            read_chunk = client._client.chunk_results

            async def held_back(job: str, index: int) -> dict[str, Any]:
                if index == 2:  # the last chunk is not read until the first is consumed
                    await asyncio.to_thread(last_chunk_read.wait, 30)
                return await read_chunk(job, index)

            client._client.chunk_results = held_back  # type: ignore[method-assign,assignment]
            results = client.job_results(job_id)
            with ThreadPoolExecutor(1) as pool:
                try:
                    first = pool.submit(next, results).result(timeout=10)
                finally:
                    last_chunk_read.set()
            rest = list(results)
            assert [base64.b64decode(r["data"]["ciphertext"]) != b"" for r in [first, *rest]
                    ] == [True] * 6

            # Stopping early leaves nothing running on the client's loop.
            partial = client.job_results(job_id, read_ahead=2)
            next(partial)
            partial.close()
            assert client.decrypt(client.encrypt(b"after", 1)["ciphertext"], 1) == b"after"

    await asyncio.to_thread(use)


async def test_every_operation_through_the_client(stack: LocalStack, api_key: str) -> None:
    async with await PqkmsClient.connect(stack.nats_url, api_key) as client:
        assert (await client.generate_key("Kyber768"))["key_version"] == 1
        await client.generate_key("Dilithium3")
        sealed = await client.encrypt(b"hello", 1)
        assert await client.decrypt(sealed["ciphertext"], 1) == b"hello"
        encapsulated = await client.encapsulate(1)
        assert (await client.decapsulate(encapsulated["kem_ciphertext"], 1))[
            "shared_secret"] == encapsulated["shared_secret"]
        wrapped = await client.wrap_key(b"k" * 32, 1)
        assert await client.unwrap_key(wrapped["wrapped_key"], 1) == b"k" * 32
        signed = await client.sign(b"msg", 1, context=b"ctx")
        assert await client.verify(b"msg", signed["signature"], 1, context=b"ctx")
        assert not await client.verify(b"other", signed["signature"], 1, context=b"ctx")
        digest = hashlib.sha256(b"msg").digest()
        hashed = await client.sign_hash(digest, "SHA-256", 1)
        assert await client.verify_hash(digest, "SHA-256", hashed["signature"], 1)
        assert (await client.list_keys())["total"] == 2
        assert (await client.active_key("Kyber768"))["key_version"] == 1
        assert (await client.rotate_key("Kyber768"))["old_key_version"] == 1
        assert (await client.get_key("Kyber768", 1))["status"] == "retired"
        assert (await client.archive_key("Kyber768", 1))["status"] == "archived"
        with pytest.raises(PqkmsError) as raised:
            await client.decrypt(sealed["ciphertext"], 1)
        assert raised.value.code == "ERR_FORBIDDEN_001"

        items = [{"plaintext": base64.b64encode(b"%d" % n).decode(), "reference": str(n)}
                 for n in range(1200)]
        results = await client.batch("kem.encrypt", items, key_version=2)
        assert [r["reference"] for r in results] == [str(n) for n in range(1200)]
        opened = await client.batch("kem.decrypt", [{"ciphertext": r["data"]["ciphertext"]}
                                                    for r in results], key_version=2)
        assert [base64.b64decode(r["data"]["plaintext"]) for r in opened] == [
            b"%d" % n for n in range(1200)]


async def test_rate_limited_requests_are_retried_after_the_hint(stack: LocalStack) -> None:
    free = await stack.create_tenant(Plan.FREE)  # 10 per second, burst 20
    async with await PqkmsClient.connect(stack.nats_url, free) as client:
        await client.generate_key("Dilithium3")
        loop = asyncio.get_running_loop()
        started = loop.time()
        signed = await asyncio.gather(*(client.sign(b"m", 1) for _ in range(35)))
        assert len(signed) == 35  # every one eventually admitted, none failed
        assert loop.time() - started >= 1.0  # ... by waiting, not by luck


async def test_sync_client(stack: LocalStack, api_key: str) -> None:
    def use() -> None:
        with SyncPqkmsClient(stack.nats_url, api_key) as client:
            client.generate_key("Kyber768")
            sealed = client.encrypt(b"sync", 1)
            assert client.decrypt(sealed["ciphertext"], 1) == b"sync"
            job_id = client.submit_job("kem.encrypt", [{"plaintext": "AA=="}] * 3,
                                       key_version=1)
            assert client.wait_for_job(job_id, timeout=60)["items_done"] == 3
            assert len(list(client.job_results(job_id))) == 3

    await asyncio.to_thread(use)
