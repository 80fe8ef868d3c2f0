"""The POST operation routes answer exactly as FastAPI's endpoint for them would.

``api_bridge.direct_post`` serves these routes ahead of FastAPI; each case here is sent
once that way and once through FastAPI's own stack (middleware, router, endpoint) of a
second app, with the same scripted gateway behind both. Status, every header, the
body, what reached the gateway, the log lines and the metrics must be the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import structlog
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from api_bridge import replies, request_context
from api_bridge.app import create_app
from api_bridge.direct_routes import BridgeApp
from api_bridge.errors import BridgeError
from api_bridge.nats_gateway import BUS_DOWN, Reply
from schemas.envelope import error_envelope, success_envelope
from schemas.errors import ErrorCode
from worker.config import Settings
from worker.log_throttle import ThrottledWarning, ThrottleWindow

ENCRYPT = "/api/v1/kem/encrypt"
BODY = orjson.dumps({"key_version": 1, "plaintext": "aGVsbG8="})
SETTINGS = {"max_message_bytes": 1024, "nats_url": "nats://127.0.0.1:1"}
LIMIT = Settings(**SETTINGS).nats_max_payload()  # type: ignore[arg-type]


def _reply(envelope: dict[str, Any], headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(body=orjson.dumps(envelope), headers=dict(headers or {}))


def _ok(request_id: str) -> Reply:
    return _reply(success_envelope({"ciphertext": "Y3Q="}, request_id))


def _error(code: ErrorCode, retry: bool = False) -> Callable[[str], Reply]:
    def reply(request_id: str) -> Reply:
        envelope = error_envelope(code, request_id, None, 7 if retry else None)
        return _reply(envelope, {"Retry-After": "7"} if retry else None)
    return reply


def _raise(error: Exception) -> Callable[[str], Reply]:
    def reply(request_id: str) -> Reply:
        raise error
    return reply


@dataclass
class ScriptedGateway:
    """Stands in for ``NatsGateway.request``: records each call, answers by script."""

    answer: Callable[[str], Reply]
    calls: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    async def request(self, subject: str, payload: bytes, headers: Mapping[str, str],
                      wait_seconds: float | None = None) -> Reply:
        self.calls.append((subject, payload, dict(headers)))
        return self.answer(headers["X-Request-ID"])


@dataclass(frozen=True)
class Case:
    name: str
    answer: Callable[[str], Reply] = _ok
    path: str = ENCRYPT
    query: str = ""
    content: bytes | list[bytes] = BODY
    headers: dict[str, str] = field(
        default_factory=lambda: {"X-API-Key": "qph_parity", "X-Request-ID": "rid-parity"})


CASES = [
    Case("success"),
    Case("created", path="/api/v1/kms/keys/generate",
         content=orjson.dumps({"algorithm": "Kyber768"})),
    Case("a batch", path="/api/v1/kem/encrypt/batch",
         content=orjson.dumps({"items": [{"plaintext": "aGVsbG8="}]})),
    Case("worker error", answer=_error(ErrorCode.KEM_KEY_NOT_FOUND)),
    Case("rate limited", answer=_error(ErrorCode.RATE_LIMITED, retry=True)),
    Case("reply not JSON", answer=lambda request_id: Reply(b"not json", {})),
    Case("reply not an envelope", answer=lambda request_id: _reply({"data": {}})),
    Case("no worker", answer=_raise(BridgeError(ErrorCode.SERVICE_UNAVAILABLE, BUS_DOWN))),
    Case("timeout", answer=_raise(BridgeError(ErrorCode.TIMEOUT, "No reply"))),
    Case("crash", answer=_raise(RuntimeError("internal detail qph_secret"))),
    Case("no API key", headers={"X-Request-ID": "rid-parity"}),
    Case("two API keys", headers={"X-API-Key": "qph_first", "x-api-key": "qph_second",
                                  "X-Request-ID": "rid-parity"}),
    Case("no request id", headers={"X-API-Key": "qph_parity"}),
    Case("a request id with a space", headers={"X-Request-ID": "rid parity"}),
    Case("not JSON", content=b"{not json"),
    Case("a JSON list", content=b"[1, 2]"),
    Case("empty body", content=b""),
    Case("declared too large", content=b"{}" + b" " * LIMIT),
    Case("streamed", content=[b'{"key_version"', b": 1}"]),
    Case("streamed too large", content=[b"{" + b" " * (LIMIT // 2), b" " * LIMIT, b"}"]),
    Case("a query parameter", query="?key_version=1"),
    Case("an empty query", query="?"),
    Case("a query of separators only", query="?&"),
]


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@dataclass
class Sent:
    status: int
    headers: list[tuple[str, str]]
    body: Any
    logs: list[dict[str, Any]]
    metrics: list[str]


def _app(tmp_path: Any, gateway: ScriptedGateway) -> BridgeApp:
    app = create_app(Settings(data_dir=tmp_path, **SETTINGS))  # type: ignore[arg-type]
    app.state.gateway.request = gateway.request
    return app


def _through_fastapi(app: BridgeApp) -> Callable[[Scope, Receive, Send], Any]:
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)  # not BridgeApp's shortcut
    return asgi


def _normalized(response: httpx.Response) -> Any:
    body = response.json()
    body.pop("timestamp", None)
    if not response.headers.get("x-request-id", "").startswith("rid"):
        body.pop("request_id", None)  # a fresh id on each side
    return body


async def _send(app: Any, case: Case) -> Sent:
    # Each way writes its first warning and crash line (they are one a second).
    request_context.CRASH_LINES = ThrottleWindow()
    replies.INVALID_REPLY_WARNING = ThrottledWarning("api_bridge", "worker_reply_invalid")
    content = _stream(case.content) if isinstance(case.content, list) else case.content
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        with structlog.testing.capture_logs() as logs:
            response = await http.post(case.path + case.query, content=content,
                                       headers=case.headers)
        exposition = (await http.get("/metrics")).text
    headers = [(name, value if name != "x-request-id" or value.startswith("rid") else "fresh")
               for name, value in response.headers.multi_items()]
    for line in logs:
        line.pop("latency_ms", None)
        line.pop("traceback", None)  # the frames between the two ways differ; "where" not
        if not str(line.get("request_id", "")).startswith("rid"):
            line["request_id"] = "fresh"
    requests = [line for line in exposition.splitlines()
                if line.startswith("pqkms_bridge_requests_total")]
    return Sent(response.status_code, headers, _normalized(response), logs, requests)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_each_case_is_answered_the_same_both_ways(tmp_path: Any, case: Case) -> None:
    direct_gateway, fastapi_gateway = ScriptedGateway(case.answer), ScriptedGateway(case.answer)
    direct_app = _app(tmp_path / "direct", direct_gateway)
    fastapi_app = _app(tmp_path / "fastapi", fastapi_gateway)
    direct = await _send(direct_app, case)
    through_fastapi = await _send(_through_fastapi(fastapi_app), case)
    assert direct.status == through_fastapi.status
    assert direct.headers == through_fastapi.headers
    assert direct.body == through_fastapi.body
    assert direct.logs == through_fastapi.logs
    assert direct.metrics == through_fastapi.metrics and direct.metrics
    assert [call[:2] for call in direct_gateway.calls] == [
        call[:2] for call in fastapi_gateway.calls]
    assert [_comparable(call[2]) for call in direct_gateway.calls] == [
        _comparable(call[2]) for call in fastapi_gateway.calls]


def _comparable(headers: dict[str, str]) -> dict[str, str]:
    request_id = headers["X-Request-ID"]
    return {**headers, "X-Request-ID": request_id if request_id.startswith("rid") else "fresh"}
