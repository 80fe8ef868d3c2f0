"""HTTP status from the registry, Retry-After on 429, 502 for replies that are not envelopes."""

from __future__ import annotations

import httpx
import orjson
import pytest
import structlog

from api_bridge import replies
from schemas import ErrorCode, http_status_for
from worker.log_throttle import ThrottledWarning

from .fake_worker import FakeWorker


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
async def test_every_error_code_maps_to_its_registry_status(
    client: httpx.AsyncClient, worker: FakeWorker, code: ErrorCode
) -> None:
    worker.error_code = code.value
    response = await client.post("/api/v1/kem/decrypt", json={"key_version": 1})
    assert response.status_code == http_status_for(code) == code.http_status
    assert response.content == worker.replies[-1]  # passed through unchanged
    body = response.json()
    assert body["error"]["code"] == body["error"]["error_code"] == code.value
    assert response.headers["X-Request-ID"] == body["request_id"]


async def test_unknown_error_code_is_a_500(client: httpx.AsyncClient, worker: FakeWorker) -> None:
    worker.error_code = "ERR_SOMETHING_NEW_001"
    response = await client.post("/api/v1/kem/decrypt", json={"key_version": 1})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "ERR_SOMETHING_NEW_001"


async def test_error_on_a_get_route(client: httpx.AsyncClient, worker: FakeWorker) -> None:
    worker.error_code = ErrorCode.KMS_KEY_NOT_FOUND.value
    response = await client.get("/api/v1/kms/keys/Kyber768/9")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ERR_KMS_003"


async def test_429_carries_retry_after_from_the_reply_header(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.error_code = ErrorCode.RATE_LIMITED.value
    worker.retry_after = 2
    response = await client.post("/api/v1/signature/sign", json={"key_version": 1})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"]["retry_after"] == 2


async def test_429_retry_after_from_the_body_when_the_header_is_missing(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.raw_reply = orjson.dumps({
        "error": {"code": "ERR_RATE_001", "error_code": "ERR_RATE_001",
                  "message": "Rate limit exceeded. Retry after 7 seconds.", "retry_after": 7},
        "request_id": "r-429", "timestamp": "2026-02-15T10:30:12.000Z",
    })
    response = await client.post("/api/v1/signature/sign", json={"key_version": 1})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


async def test_429_without_any_hint_still_has_retry_after(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.raw_reply = orjson.dumps({
        "error": {"code": "ERR_RATE_001", "error_code": "ERR_RATE_001", "message": "slow down"},
        "request_id": "r-429b", "timestamp": "2026-02-15T10:30:12.000Z",
    })
    response = await client.post("/api/v1/signature/sign", json={"key_version": 1})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("raw", [
    b"not json",
    b"[]",
    b'{"data": 1, "request_id": "r", "timestamp": "t"}',
    b'{"data": {}, "timestamp": "t"}',
    b'{"data": {}, "error": {}, "request_id": "r", "timestamp": "t"}',
    b'{"error": {"code": "ERR_X"}, "request_id": "r", "timestamp": "t"}',
    b'{"data": {}, "request_id": "bad\\nid", "timestamp": "t"}',
], ids=["not-json", "list", "data-not-object", "no-request-id", "both", "error-incomplete",
        "request-id-with-newline"])
async def test_reply_that_is_not_an_envelope_is_a_502(
    client: httpx.AsyncClient, worker: FakeWorker, raw: bytes
) -> None:
    worker.raw_reply = raw
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1},
                                 headers={"X-Request-ID": "rid-502"})
    assert response.status_code == 502
    body = response.json()
    assert body["error"]["code"] == body["error"]["error_code"] == "ERR_BAD_GATEWAY_001"
    assert body["request_id"] == response.headers["X-Request-ID"] == "rid-502"
    assert "not json" not in response.text


async def test_a_reply_that_is_not_an_envelope_is_a_warning_without_its_bytes(
    client: httpx.AsyncClient, worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (a throttle of its own: the 502 tests above may have used the shared one's second)
    monkeypatch.setattr(replies, "INVALID_REPLY_WARNING",
                        ThrottledWarning("api_bridge", "worker_reply_invalid"))
    worker.raw_reply = b"rogue responder text"
    with structlog.testing.capture_logs() as logs:
        response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1})
    assert response.status_code == 502
    [warning] = [line for line in logs if line["event"] == "worker_reply_invalid"]
    assert warning["log_level"] == "warning" and warning["reply_bytes"] == 20
    assert "rogue" not in repr(logs)


async def test_success_reply_request_id_is_the_header(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.raw_reply = b'{"data": {"ok": true}, "request_id": "worker-id", "timestamp": "t"}'
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "worker-id"
