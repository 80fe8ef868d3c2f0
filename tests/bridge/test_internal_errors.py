"""Unexpected exceptions become a generic 500 envelope, and logs never hold secrets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
import structlog

from api_bridge import request_context
from api_bridge.app import create_app
from api_bridge.nats_gateway import Reply
from worker.config import Settings
from worker.log_throttle import ThrottleWindow

from .conftest import API_KEY
from .fake_worker import FakeWorker


def _exploding_app() -> Any:
    app = create_app(Settings(nats_url="nats://127.0.0.1:1"))

    async def explode(subject: str, payload: bytes, headers: Mapping[str, str],
                      wait_seconds: float | None = None) -> Reply:
        raise RuntimeError("internal detail qph_secret")

    app.state.gateway.request = explode
    return app


async def test_unexpected_exception_is_a_generic_500(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_context, "CRASH_LINES", ThrottleWindow())
    transport = httpx.ASGITransport(app=_exploding_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        with structlog.testing.capture_logs() as logs:
            response = await http.post("/api/v1/kem/encrypt", json={"key_version": 1},
                                       headers={"X-Request-ID": "rid-500"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == {"code": "ERR_INTERNAL_001", "error_code": "ERR_INTERNAL_001",
                             "message": "Internal server error"}
    assert body["request_id"] == response.headers["X-Request-ID"] == "rid-500"
    assert "qph_secret" not in response.text and "Traceback" not in response.text
    crash = [entry for entry in logs if entry["event"] == "unhandled_exception"]
    assert crash and crash[0]["exception_type"] == "RuntimeError"
    assert "test_internal_errors.py:" in crash[0]["where"]  # where it was raised
    assert "qph_secret" not in repr(logs)


async def test_a_crash_on_every_request_is_one_line_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(request_context, "CRASH_LINES", ThrottleWindow())
    transport = httpx.ASGITransport(app=_exploding_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        with structlog.testing.capture_logs() as logs:
            for _ in range(50):
                response = await http.post("/api/v1/kem/encrypt", json={"key_version": 1})
                assert response.status_code == 500
    crashes = [entry for entry in logs if entry["event"] == "unhandled_exception"]
    assert len(crashes) == 1 and crashes[0]["count"] == 1
    assert len([entry for entry in logs if entry["event"] == "http_request"]) == 50


async def test_one_log_line_per_request_without_key_or_body(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    secret_body = {"plaintext": "c2VjcmV0LXBsYWludGV4dA==", "key_version": 1}
    with structlog.testing.capture_logs() as logs:
        await client.post("/api/v1/kem/encrypt", json=secret_body,
                          headers={"X-API-Key": API_KEY, "X-Request-ID": "rid-log"})
        worker.error_code = "ERR_FORBIDDEN_001"
        await client.post("/api/v1/kem/encrypt", json=secret_body,
                          headers={"X-API-Key": API_KEY, "X-Request-ID": "rid-log-2"})
    lines = [entry for entry in logs if entry["event"] == "http_request"]
    assert [line["request_id"] for line in lines] == ["rid-log", "rid-log-2"]
    first, second = lines
    assert first["method"] == "POST" and first["path"] == "/api/v1/kem/encrypt"
    assert first["status"] == 200 and first["error_code"] is None
    assert second["status"] == 403 and second["error_code"] == "ERR_FORBIDDEN_001"
    assert isinstance(first["latency_ms"], float)
    assert first["client"] == "127.0.0.1"  # whose request it was (a failed key included)
    everything = repr(logs)
    assert API_KEY not in everything
    assert "c2VjcmV0LXBsYWludGV4dA==" not in everything
