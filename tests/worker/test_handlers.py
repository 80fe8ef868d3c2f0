"""Handler tests in memory with TestNatsBroker: no server, a real SQLite file."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import orjson
import pytest
from faststream import AckPolicy
from faststream.nats import NatsBroker, TestNatsBroker
from nats.js.errors import ServiceUnavailableError
from structlog.testing import capture_logs

from schemas.algorithms import Plan
from schemas.subjects import Subject
from worker.app import build_broker, build_services
from worker.config import Settings
from worker.services.keys import KeyLifecycleService
from worker.services.rate_limit import InMemoryRateLimiter
from worker.store import KeyStore, load_or_create_master_key


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[tuple[NatsBroker, str]]:
    settings = Settings(data_dir=tmp_path, audit=False)
    store = await KeyStore.open(settings.resolved_database_url(),
                                load_or_create_master_key(tmp_path / "master.key"))
    _, api_key = await store.create_tenant("acme", Plan.PRO)
    services = build_services(settings, store, InMemoryRateLimiter())
    broker = build_broker(settings, services)
    async with TestNatsBroker(broker) as test_broker:
        yield test_broker, api_key
    services.runner.close()
    await store.close()


async def request(broker: NatsBroker, subject: Subject, body: Any, api_key: str | None,
                  request_id: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    headers = {"X-API-Key": api_key} if api_key else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    # (a generous timeout: the first API-key lookup can be slow on a busy machine)
    reply = await broker.request(payload, subject.value, headers=headers, timeout=10)
    return orjson.loads(reply.body), dict(reply.headers)


async def test_every_contract_subject_is_served(harness: tuple[NatsBroker, str]) -> None:
    broker, api_key = harness
    for subject in Subject:
        if subject is Subject.HEALTH_PING:
            continue
        body, _ = await request(broker, subject, b"[]", api_key)
        assert body["error"]["code"] == "ERR_INVALID_001", subject


async def test_generate_then_encrypt_through_handlers(harness: tuple[NatsBroker, str]) -> None:
    broker, api_key = harness
    generated, headers = await request(broker, Subject.KEYS_GENERATE,
                                       {"algorithm": "Kyber768"}, api_key, "req-1")
    assert generated["data"]["key_version"] == 1
    assert headers["X-Request-ID"] == "req-1" and generated["request_id"] == "req-1"
    encrypted, _ = await request(broker, Subject.KEM_ENCRYPT,
                                 {"plaintext": "aGVsbG8=", "key_version": 1}, api_key)
    decrypted, _ = await request(broker, Subject.KEM_DECRYPT,
                                 {"ciphertext": encrypted["data"]["ciphertext"],
                                  "key_version": 1}, api_key)
    assert decrypted["data"]["plaintext"] == "aGVsbG8="


async def test_a_request_id_the_bridge_would_replace_is_replaced_over_nats_too(
    harness: tuple[NatsBroker, str],
) -> None:
    broker, api_key = harness
    for odd in ("two words", "caf\u00e9", "x" * 129):
        listed, headers = await request(broker, Subject.KEYS_LIST, {}, api_key, odd)
        assert listed["request_id"] != odd and headers["X-Request-ID"] == listed["request_id"]
        assert len(listed["request_id"]) == 36  # a fresh UUID
    listed, _ = await request(broker, Subject.KEYS_LIST, {}, api_key, "trace-7f:0001")
    assert listed["request_id"] == "trace-7f:0001"


async def test_missing_key_is_401(harness: tuple[NatsBroker, str]) -> None:
    broker, _ = harness
    body, _ = await request(broker, Subject.KEYS_LIST, {}, None)
    assert body["error"]["code"] == "ERR_AUTH_001"


async def test_unexpected_exception_is_generic_500_with_a_log_line(
    harness: tuple[NatsBroker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, api_key = harness
    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("internal detail that must not leak: /etc/secret")

    monkeypatch.setattr(KeyStore, "list_keys", explode)
    with capture_logs() as logs:
        body, _ = await request(broker, Subject.KEYS_LIST, {}, api_key)
    assert body["error"] == {"code": "ERR_INTERNAL_001", "error_code": "ERR_INTERNAL_001",
                             "message": "Internal server error"}
    assert any(entry["event"] == "request_failed" for entry in logs)


async def test_one_summary_line_per_request_without_payloads(
    harness: tuple[NatsBroker, str]
) -> None:
    broker, api_key = harness
    await request(broker, Subject.KEYS_GENERATE, {"algorithm": "Kyber768"}, api_key)
    plaintext = base64.b64encode(b"very secret plaintext").decode()
    with capture_logs() as logs:
        await request(broker, Subject.KEM_ENCRYPT, {"plaintext": plaintext, "key_version": 1},
                      api_key, "req-log")
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["subject"] == "pqkms.v1.kem.encrypt" and line["outcome"] == "OK"
    assert line["request_id"] == "req-log" and "duration_ms" in line
    flat = repr(logs)
    assert plaintext not in flat and api_key not in flat and "very secret" not in flat


@pytest.mark.parametrize("failure", [nats.errors.TimeoutError(), nats.errors.NoRespondersError(),
                                     ServiceUnavailableError()])
async def test_nats_briefly_away_is_a_503_to_retry_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    async def away(*_args: object) -> None:
        raise failure

    monkeypatch.setattr(KeyLifecycleService, "list", away)
    settings = Settings(data_dir=tmp_path, audit=False)
    store = await KeyStore.open(settings.resolved_database_url(),
                                load_or_create_master_key(tmp_path / "master.key"))
    _, api_key = await store.create_tenant("acme", Plan.PRO)
    services = build_services(settings, store, InMemoryRateLimiter())
    try:
        async with TestNatsBroker(build_broker(settings, services)) as broker:
            body, _ = await request(broker, Subject.KEYS_LIST, {}, api_key)
    finally:
        services.runner.close()
        await store.close()
    assert "data" not in body and body["error"]["code"] == "ERR_SERVICE_001"
    assert "retry" in body["error"]["message"]


async def test_request_subscribers_leave_decoding_and_acks_to_the_handler(
        harness: tuple[NatsBroker, str]) -> None:
    # FastStream would otherwise JSON-decode every body (a job chunk is up to a megabyte)
    # and wrap each request in its acknowledgement middleware (worker/handlers/routing.py).
    broker, _ = harness
    subscribers = {subscriber.subject.template: subscriber for subscriber in broker.subscribers}
    assert Subject.JOBS_SUBMIT.value in subscribers
    for subject, subscriber in subscribers.items():
        if subject != Subject.HEALTH_PING.value:
            assert subscriber.ack_policy is AckPolicy.MANUAL, subject
