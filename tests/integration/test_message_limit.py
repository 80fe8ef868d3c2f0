"""Requests at nats-server's message limit, as `pqkms up` sets it (the workers' own).

nats-server closes a connection that sends a message over its ``max_payload``, payload
and headers together, and every request in flight on it is lost. A body the bridge
accepts (up to that limit) or a payload the Python client builds may fit by itself and
not with the headers: such a request gets its own clear error, and the connection and
the other requests on it carry on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from nats.errors import MaxPayloadError

from pqkms.client import PqkmsClient
from schemas.algorithms import Plan
from tests.support.stack import LocalStack
from worker.config import Settings

pytestmark = pytest.mark.integration

MESSAGE_LIMIT = Settings().nats_max_payload()
ENCRYPT = {"plaintext": "aGVsbG8=", "key_version": 1, "algorithm": "Kyber768"}


@pytest.fixture(scope="module")
async def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack(Path(tmp_path_factory.mktemp("limit")), nats_max_payload=MESSAGE_LIMIT)
    try:
        await stack.start(workers=1, bridge=True)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
async def api_key(limited_stack: LocalStack) -> str:
    key = await limited_stack.create_tenant(Plan.ENTERPRISE)
    async with await PqkmsClient.connect(limited_stack.nats_url, key) as client:
        await client.generate_key("Kyber768")
    return key


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
