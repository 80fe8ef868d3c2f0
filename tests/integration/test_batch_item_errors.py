"""Failed batch items are visible on a real stack (nats-server, a worker with its metrics
port, the HTTP bridge): the reply stays HTTP 200 with per-item results, and the worker's
``pqkms_batch_item_errors_total``, its ``request`` log line (``items_failed``) and the
audit record (the envelope's outcome and item count, docs/audit.md) say what happened.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pqkms.nats_embedded import find_free_port
from schemas.algorithms import Plan
from schemas.errors import ErrorCode
from schemas.subjects import Subject
from tests.support.stack import LocalStack
from tests.support.wire import b64

pytestmark = pytest.mark.integration

DECRYPT_BATCH = Subject.KEM_DECRYPT_BATCH.value


@pytest.fixture(scope="module")
async def metered(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[
        tuple[LocalStack, int]]:
    """One worker serving metrics on a port of its own, and the bridge."""
    local = LocalStack(Path(tmp_path_factory.mktemp("batch-item-errors")))
    port = find_free_port()
    try:
        await local.start(workers=0)
        local.extra_env["PQKMS_METRICS_PORT"] = str(port)
        local.start_worker()
        del local.extra_env["PQKMS_METRICS_PORT"]
        await local.wait_for_workers(1)
        local.start_bridge()
        await local.wait_for_bridge()
        yield local, port
    finally:
        local.stop()


def item_errors(port: int) -> dict[tuple[str, str], float]:
    """``(operation, code) → count`` of the worker's ``pqkms_batch_item_errors_total``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(sample.labels["operation"], sample.labels["code"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "pqkms_batch_item_errors_total"}


async def request_line(local: LocalStack, request_id: str) -> dict[str, Any]:
    """The worker's ``request`` log line of ``request_id`` (info lines reach the file
    within a flush interval)."""
    [log] = local.worker_logs.values()
    for _ in range(100):
        for line in log.read_bytes().splitlines():
            if request_id.encode() not in line:
                continue
            event: dict[str, Any] = orjson.loads(line)
            if event.get("event") == "request" and event.get("request_id") == request_id:
                return event
        await asyncio.sleep(0.05)
    raise AssertionError(f"no request line for {request_id}")


def audit_record(local: LocalStack, request_id: str) -> dict[str, Any]:
    connection = sqlite3.connect(local.root / "pqkms.db", timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        rows = connection.execute("SELECT * FROM pqkms_audit_record WHERE request_id = ?",
                                  (request_id,)).fetchall()
    finally:
        connection.close()
    assert len(rows) == 1, f"{len(rows)} records for {request_id}"
    return dict(rows[0])


async def test_failed_decrypt_items_are_counted_logged_and_audited(
    metered: tuple[LocalStack, int],
) -> None:
    local, port = metered
    api_key = await local.create_tenant(Plan.ENTERPRISE)
    headers = {"X-API-Key": api_key}
    garbage = [{"ciphertext": base64.b64encode(secrets.token_bytes(1200)).decode()}
               for _ in range(3)]
    async with httpx.AsyncClient(base_url=local.http_url, timeout=30) as http:
        generated = await http.post("/api/v1/kms/keys/generate", headers=headers,
                                    json={"algorithm": "Kyber768"})
        assert generated.status_code == 201, generated.text
        sealed = await http.post("/api/v1/kem/encrypt", headers=headers,
                                 json={"plaintext": b64(b"fine"), "key_version": 1})
        good = {"ciphertext": sealed.json()["data"]["ciphertext"]}
        before = item_errors(port)

        async def decrypt_batch(items: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
            request_id = f"batch-{uuid.uuid4().hex[:12]}"
            reply = await http.post("/api/v1/kem/decrypt/batch",
                                    headers={**headers, "X-Request-ID": request_id},
                                    json={"key_version": 1, "items": items})
            # The Qpher contract: 200 and one result or error per item, with counts.
            assert reply.status_code == 200, reply.text
            data: dict[str, Any] = reply.json()["data"]
            return request_id, data

        # The review's case: every item failed. Then one good item among bad ones, one
        # of them naming a key version that does not exist.
        all_bad, all_bad_data = await decrypt_batch(garbage)
        mixed, mixed_data = await decrypt_batch(
            [good, *garbage[:2], {**good, "key_version": 7}])

    assert (all_bad_data["total"], all_bad_data["succeeded"], all_bad_data["failed"]) == (
        3, 0, 3)
    assert (mixed_data["total"], mixed_data["succeeded"], mixed_data["failed"]) == (4, 1, 3)
    [code] = {result["error"]["code"] for result in all_bad_data["results"]}
    not_found = ErrorCode.KEM_KEY_NOT_FOUND.value
    assert [r["error"]["code"] for r in mixed_data["results"][1:]] == [code, code, not_found]

    # Metrics: five undecryptable items and one unknown key version, by code.
    after = item_errors(port)
    assert after.get((DECRYPT_BATCH, code), 0) - before.get((DECRYPT_BATCH, code), 0) == 5
    assert after.get((DECRYPT_BATCH, not_found), 0) - before.get(
        (DECRYPT_BATCH, not_found), 0) == 1

    # The worker's log line: the envelope's outcome, and how many items failed.
    for request_id, failed in ((all_bad, 3), (mixed, 3)):
        line = await request_line(local, request_id)
        assert (line["subject"], line["outcome"], line["items_failed"]) == (
            DECRYPT_BATCH, "OK", failed)

    # The audit record keeps its format: the envelope's outcome and the items submitted
    # (docs/audit.md, "Batches"); the failed ones are in the metric and the log line.
    record = audit_record(local, all_bad)
    assert (record["operation"], record["outcome"], record["items"]) == (
        DECRYPT_BATCH, "OK", 3)
