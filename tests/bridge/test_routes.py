"""Every route reaches the right subject with the right body and headers."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest

from schemas import OPERATIONS, Subject
from schemas.operations import Operation

from .conftest import API_KEY
from .fake_worker import FakeWorker

POST_OPERATIONS = [op for op in OPERATIONS if op.method == "POST"]

# (GET URL, subject, body the worker must receive)
GET_CASES = [
    ("/api/v1/kms/keys", Subject.KEYS_LIST, {}),
    ("/api/v1/kms/keys?algorithm=Kyber768", Subject.KEYS_LIST, {"algorithm": "Kyber768"}),
    ("/api/v1/kms/keys?status=retired", Subject.KEYS_LIST, {"status": "retired"}),
    ("/api/v1/kms/keys?algorithm=", Subject.KEYS_LIST, {"algorithm": ""}),
    ("/api/v1/kms/keys?algorithm=X-Wing&status=active", Subject.KEYS_LIST,
     {"algorithm": "X-Wing", "status": "active"}),
    ("/api/v1/kms/keys/active?algorithm=Dilithium3", Subject.KEYS_ACTIVE,
     {"algorithm": "Dilithium3"}),
    ("/api/v1/kms/keys/active", Subject.KEYS_ACTIVE, {}),
    ("/api/v1/kms/keys/Kyber768/3", Subject.KEYS_GET, {"algorithm": "Kyber768", "key_version": 3}),
    ("/api/v1/kms/keys/Composite-ML-DSA/12", Subject.KEYS_GET,
     {"algorithm": "Composite-ML-DSA", "key_version": 12}),
    ("/api/v1/kms/keys/3?algorithm=Dilithium3", Subject.KEYS_GET,
     {"algorithm": "Dilithium3", "key_version": 3}),
    ("/api/v1/kms/keys/7", Subject.KEYS_GET, {"key_version": 7}),
]


def test_every_operation_is_exercised() -> None:
    covered = {op.subject for op in POST_OPERATIONS} | {case[1] for case in GET_CASES}
    assert covered == {op.subject for op in OPERATIONS}


@pytest.mark.parametrize("operation", POST_OPERATIONS, ids=lambda op: op.path)
async def test_post_route_forwards_body_bytes_unchanged(
    client: httpx.AsyncClient, worker: FakeWorker, operation: Operation
) -> None:
    # Odd spacing and key order: the bridge must not re-serialise.
    raw = b'{ "key_version" : 1,"algorithm":"Kyber768",  "extra": [1, 2.5, null] }'
    response = await client.post(operation.path, content=raw,
                                 headers={"X-API-Key": API_KEY,
                                          "Content-Type": "application/json"})
    assert response.status_code == operation.success_status
    received = worker.last
    assert received.subject == operation.subject.value
    assert received.raw == raw
    assert received.headers["X-API-Key"] == API_KEY
    # The worker's envelope is the HTTP body, byte for byte.
    assert response.content == worker.replies[-1]
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(("url", "subject", "body"), GET_CASES, ids=[c[0] for c in GET_CASES])
async def test_get_route_puts_parameters_in_the_body(
    client: httpx.AsyncClient,
    worker: FakeWorker,
    url: str,
    subject: Subject,
    body: dict[str, object],
) -> None:
    response = await client.get(url, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.text
    assert worker.last.subject == subject.value
    assert worker.last.body == body
    assert response.json()["data"]["body"] == body


async def test_generate_answers_201(client: httpx.AsyncClient, worker: FakeWorker) -> None:
    response = await client.post("/api/v1/kms/keys/generate", json={"algorithm": "Kyber768"})
    assert response.status_code == 201
    rotate = await client.post("/api/v1/kms/keys/rotate", json={"algorithm": "Kyber768"})
    assert rotate.status_code == 200


async def test_request_id_is_generated_when_absent(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1})
    request_id = response.headers["X-Request-ID"]
    assert uuid.UUID(request_id).version == 4
    assert response.json()["request_id"] == request_id
    assert worker.last.headers["X-Request-ID"] == request_id


async def test_request_id_is_forwarded_and_echoed(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    sent = "550e8400-e29b-41d4-a716-446655440000"
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1},
                                 headers={"x-request-id": sent})
    assert worker.last.headers["X-Request-ID"] == sent
    assert response.headers["X-Request-ID"] == sent
    assert response.json()["request_id"] == sent


@pytest.mark.parametrize("bad", ["a" * 129, "has space", "ünïcode"])
async def test_unusable_request_id_is_replaced(
    client: httpx.AsyncClient, worker: FakeWorker, bad: str
) -> None:
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1},
                                 headers=[(b"X-Request-ID", bad.encode("utf-8"))])
    request_id = response.headers["X-Request-ID"]
    assert request_id != bad
    assert uuid.UUID(request_id)
    assert worker.last.headers["X-Request-ID"] == request_id == response.json()["request_id"]


@pytest.mark.parametrize("header_name", ["x-api-key", "X-API-KEY", "X-Api-Key", "x-API-key"])
async def test_api_key_is_accepted_in_any_case(
    client: httpx.AsyncClient, worker: FakeWorker, header_name: str
) -> None:
    await client.get("/api/v1/kms/keys", headers={header_name: "qph_any_case"})
    assert worker.last.headers["X-API-Key"] == "qph_any_case"


async def test_missing_api_key_is_not_invented(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    await client.get("/api/v1/kms/keys")
    assert "X-API-Key" not in worker.last.headers


async def test_concurrent_requests_keep_their_own_replies(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    async def one(n: int) -> None:
        response = await client.post("/api/v1/signature/sign",
                                     content=orjson.dumps({"key_version": n}),
                                     headers={"X-Request-ID": f"req-{n}"})
        assert response.status_code == 200
        assert response.json()["data"]["body"] == {"key_version": n}
        assert response.headers["X-Request-ID"] == f"req-{n}"

    await asyncio.gather(*(one(n) for n in range(1, 101)))
