"""Bad HTTP input gets a clean error envelope, never FastAPI's own shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from schemas.subjects import HEADER_API_KEY, HEADER_INPUT_ERROR

from .conftest import API_KEY
from .fake_worker import FakeWorker
from .live import LiveBridge

VERSION_MESSAGE = "Validation failed: key_version must be an integer >= 1"


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """The response is our error envelope with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "request_id", "timestamp"}
    assert "detail" not in body
    assert body["error"]["code"] == body["error"]["error_code"] == code
    assert body["request_id"] == response.headers["X-Request-ID"]
    message = body["error"]["message"]
    assert isinstance(message, str)
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"key_version": 1', "request body is not valid JSON (line 1, column"),
    (b"{'key_version': 1}", "request body is not valid JSON"),
    (b"NaN", "request body is not valid JSON"),
    (b"   ", "request body is not valid JSON"),
    (b"", "request body is required (a JSON object)"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'"text"', "request body must be a JSON object"),
    (b"42", "request body must be a JSON object"),
    (b"null", "request body must be a JSON object"),
])
async def test_body_that_is_not_a_json_object(
    client: httpx.AsyncClient, worker: FakeWorker, raw: bytes, expected: str
) -> None:
    response = await client.post("/api/v1/kem/encrypt", content=raw,
                                 headers={"Content-Type": "application/json"})
    error = assert_envelope(response, 400, "ERR_INVALID_001")
    assert str(error["message"]).startswith("Validation failed: " + expected)
    assert worker.received == []


async def test_oversized_body_with_content_length(
    bridge: LiveBridge, client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    limit = bridge.settings.nats_max_payload()
    raw = b'{"plaintext": "' + b"A" * limit + b'"}'
    response = await client.post("/api/v1/kem/encrypt", content=raw)
    error = assert_envelope(response, 400, "ERR_INVALID_001")
    assert error["message"] == f"Validation failed: request body is larger than {limit} bytes"
    assert worker.received == []


async def test_oversized_chunked_body_without_content_length(
    bridge: LiveBridge, client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    limit = bridge.settings.nats_max_payload()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"plaintext": "'
        for _ in range(limit // 65536 + 2):
            yield b"A" * 65536
        yield b'"}'

    response = await client.post("/api/v1/kem/encrypt", content=chunks())
    error = assert_envelope(response, 400, "ERR_INVALID_001")
    assert "larger than" in str(error["message"])
    assert worker.received == []


async def test_body_just_under_the_limit_is_forwarded(
    bridge: LiveBridge, client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    limit = bridge.settings.nats_max_payload()
    raw = b'{"plaintext": "' + b"A" * (limit - 2048) + b'"}'
    response = await client.post("/api/v1/kem/encrypt", content=raw)
    assert response.status_code == 200
    assert worker.last.raw == raw


@pytest.mark.parametrize("url", [
    "/api/v1/kms/keys/Kyber768/abc",
    "/api/v1/kms/keys/Kyber768/1.5",
    "/api/v1/kms/keys/Kyber768/-1",
    "/api/v1/kms/keys/Kyber768/%EF%BC%91",  # a full-width digit one
    "/api/v1/kms/keys/Kyber768/1e3",
    "/api/v1/kms/keys/Kyber768/99999999999999999999999",
    "/api/v1/kms/keys/abc?algorithm=Kyber768",
    "/api/v1/kms/keys/%20?algorithm=Kyber768",
])
async def test_version_that_is_not_an_integer(
    client: httpx.AsyncClient, worker: FakeWorker, url: str
) -> None:
    response = await client.get(url, headers={"X-API-Key": API_KEY})
    error = assert_envelope(response, 400, "ERR_INVALID_001")
    assert error["message"] == VERSION_MESSAGE
    assert_answered_after_the_api_key(worker)


@pytest.mark.parametrize(("method", "url", "message"), [
    ("GET", "/api/v1/kms/keys?colour=blue", "unknown query parameter 'colour'"),
    ("GET", "/api/v1/kms/keys/active?algorithm=Kyber768&status=active",
     "unknown query parameter 'status'"),
    ("GET", "/api/v1/kms/keys/Kyber768/1?algorithm=Kyber768",
     "unknown query parameter 'algorithm'"),
    ("GET", "/api/v1/kms/keys?algorithm=Kyber768&algorithm=X-Wing",
     "query parameter 'algorithm' is given more than once"),
    ("POST", "/api/v1/kem/encrypt?key_version=1", "unknown query parameter 'key_version'"),
])
async def test_unknown_route_parameters(
    client: httpx.AsyncClient, worker: FakeWorker, method: str, url: str, message: str
) -> None:
    response = await client.request(method, url, json={"key_version": 1})
    error = assert_envelope(response, 400, "ERR_INVALID_001")
    assert error["message"] == f"Validation failed: {message}"
    assert_answered_after_the_api_key(worker)


def assert_answered_after_the_api_key(worker: FakeWorker) -> None:
    """The bridge sent the parameters' error to a worker, without a body, to answer it
    after the API key and the rate limit (docs/http-api.md)."""
    (received,) = worker.received
    assert received.raw == b"{}"
    assert HEADER_INPUT_ERROR in received.headers


@pytest.mark.parametrize(("method", "url"), [
    ("GET", "/api/v1/kms/keys?colour=blue"),
    ("GET", "/api/v1/kms/keys/Kyber768/abc"),
    ("POST", "/api/v1/kem/encrypt?x=1"),
])
@pytest.mark.parametrize("api_key", [None, "not-a-key"])
async def test_invalid_parameters_without_a_valid_api_key_are_a_401(
    client: httpx.AsyncClient, realistic_worker: FakeWorker, method: str, url: str,
    api_key: str | None,
) -> None:
    # An unauthenticated caller learns nothing about validation (docs/decisions.md).
    headers = {} if api_key is None else {"X-API-Key": api_key}
    response = await client.request(method, url, json={"plaintext": "AA==", "key_version": 1},
                                    headers=headers)
    assert_envelope(response, 401, "ERR_AUTH_001")


@pytest.mark.parametrize("name", ["a\r\nX-API-Key: qph_other", "\u00e9t\u00e9", "%00"])
async def test_any_parameter_name_reaches_the_worker_intact(
    client: httpx.AsyncClient, worker: FakeWorker, name: str
) -> None:
    response = await client.get("/api/v1/kms/keys", params={name: "1"})
    error = assert_envelope(response, 400, "ERR_INVALID_001")
    assert error["message"] == f"Validation failed: unknown query parameter '{name}'"
    (received,) = worker.received
    assert HEADER_API_KEY not in received.headers


@pytest.mark.parametrize("url", ["/", "/api/v1/kem/nothing", "/api/v2/kem/encrypt",
                                 "/api/v1/kms/keys/Kyber768/1/extra",
                                 "/api/v1/kms/keys/active/"])
async def test_unknown_path_is_a_404_envelope(client: httpx.AsyncClient, url: str) -> None:
    response = await client.get(url)
    error = assert_envelope(response, 404, "ERR_NOT_FOUND_001")
    assert str(error["message"]).startswith("No route for GET ")


@pytest.mark.parametrize(("method", "url", "allow"), [
    ("GET", "/api/v1/kem/encrypt", "POST"),
    ("PUT", "/api/v1/signature/sign", "POST"),
    ("DELETE", "/api/v1/kms/keys", "GET"),
    ("POST", "/api/v1/kms/keys/active", "GET"),
    ("GET", "/api/v1/kms/keys/generate", "POST"),
    ("GET", "/api/v1/kms/keys/rotate", "POST"),
])
async def test_wrong_method_is_a_405_envelope(
    client: httpx.AsyncClient, worker: FakeWorker, method: str, url: str, allow: str
) -> None:
    response = await client.request(method, url)
    error = assert_envelope(response, 405, "ERR_INVALID_001")
    assert allow in response.headers["Allow"]
    assert f"Method {method} is not allowed" in str(error["message"])
    assert worker.received == []


async def test_docs_and_openapi_are_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/openapi.json")).status_code == 200
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
