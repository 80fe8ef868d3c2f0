"""Every worker and the bridge serve /metrics; what they count matches what was sent.

Its own stack: nats-server, two worker processes each with its own metrics port, and
the bridge — the session stack has metrics off, like a bare ``pqkms worker``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from api_bridge.errors import BridgeError
from api_bridge.metrics import nats_failure_kind
from api_bridge.nats_gateway import BUS_DOWN, BUS_LOST, NO_WORKER
from pqkms.client import PqkmsClient
from pqkms.nats_embedded import find_free_port
from pqkms.stack import StackError, StackSettings, port_available, worker_metrics_ports
from schemas.algorithms import Plan
from schemas.errors import ErrorCode
from schemas.subjects import Subject
from tests.cli.processes import clean_env, start_pqkms
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64

pytestmark = pytest.mark.integration

ENCRYPT = Subject.KEM_ENCRYPT.value
ENCRYPT_BATCH = Subject.KEM_ENCRYPT_BATCH.value
ENCRYPT_ROUTE = "/api/v1/kem/encrypt"


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = find_free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
async def metered(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[
        tuple[LocalStack, list[int]]]:
    """A stack whose two workers serve metrics on ports of their own."""
    local = LocalStack(Path(tmp_path_factory.mktemp("metrics-stack")))
    ports = distinct_free_ports(2)
    try:
        await local.start(workers=0)
        for port in ports:
            # The environment is read as each worker starts: one port per worker.
            local.extra_env["PQKMS_METRICS_PORT"] = str(port)
            local.start_worker()
        del local.extra_env["PQKMS_METRICS_PORT"]
        await local.wait_for_workers(2)
        local.start_bridge()
        await local.wait_for_bridge()
        yield local, ports
    finally:
        local.stop()


def scrape(url: str) -> list[Sample]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [sample for family in text_string_to_metric_families(response.text)
            for sample in family.samples]


def scrape_when_up(url: str, seconds: float) -> list[Sample]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return scrape(url)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(sample.value for sample in samples if sample.name == name
               and all(sample.labels.get(key) == value for key, value in labels.items()))


def scrape_workers(ports: list[int]) -> list[Sample]:
    return [sample for port in ports for sample in scrape(f"http://127.0.0.1:{port}/metrics")]


async def test_worker_and_bridge_metrics_count_what_was_sent(
    metered: tuple[LocalStack, list[int]],
) -> None:
    local, ports = metered
    api_key = await local.create_tenant(Plan.ENTERPRISE)
    client = await nats.connect(local.nats_url)
    try:
        call = NatsCaller(client, api_key)
        assert (await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})).code is None
        body = {"plaintext": b64(b"metered"), "key_version": 1}
        # Concurrent, so the queue group spreads them over both workers.
        replies = await asyncio.gather(*(call(ENCRYPT, body) for _ in range(12)))
        assert all(reply.code is None for reply in replies)
        unknown = await NatsCaller(client, "qph_not_a_key")(ENCRYPT, body)
        assert unknown.code == ErrorCode.AUTH.value
        missing = await call(ENCRYPT, {"plaintext": b64(b"x"), "key_version": 9})
        assert missing.code == ErrorCode.KEM_KEY_NOT_FOUND.value
        batch = await call(ENCRYPT_BATCH, {"key_version": 1, "items": [
            {"plaintext": b64(b"item %d" % n)} for n in range(6)]})
        assert batch.code is None and batch.data["total"] == 6
    finally:
        await client.close()

    async with httpx.AsyncClient(base_url=local.http_url, timeout=10) as http:
        ok = await http.post(ENCRYPT_ROUTE, json=body, headers={"X-API-Key": api_key})
        assert ok.status_code == 200
        refused = await http.post(ENCRYPT_ROUTE, json=body, headers={"X-API-Key": "qph_nope"})
        assert refused.status_code == 401
        assert (await http.get("/no/such/route")).status_code == 404

    workers = scrape_workers(ports)
    requests = "pqkms_requests_total"
    # 12 over NATS and 1 over HTTP succeeded; the sum over both workers says so.
    assert total(workers, requests, operation=ENCRYPT, outcome="OK") == 13
    assert total(workers, requests, operation=ENCRYPT, outcome="ERR_AUTH_001") == 2
    assert total(workers, requests, operation=ENCRYPT, outcome="ERR_KEM_005") == 1
    assert total(workers, "pqkms_request_duration_seconds_count", operation=ENCRYPT) == 16
    assert total(workers, "pqkms_request_duration_seconds_bucket", operation=ENCRYPT,
                 le="+Inf") == 16
    buckets = {s.labels["le"] for s in workers
               if s.name == "pqkms_request_duration_seconds_bucket"}
    assert {"5e-05", "0.001", "10.0", "+Inf"} <= buckets
    assert total(workers, "pqkms_batch_items_sum", operation=ENCRYPT_BATCH,
                 source="request") == 6
    # Both workers answered some: each serves its own process's figures.
    per_worker = [total(scrape(f"http://127.0.0.1:{port}/metrics"), requests,
                        operation=ENCRYPT) for port in ports]
    assert all(count > 0 for count in per_worker), per_worker
    assert total(workers, "pqkms_worker_tasks") >= 2
    # 18 requests above (the key, 12 + 3 singles, the batch, 2 over HTTP) were audited,
    # after each chain's open record, in group commits that all went through.
    assert total(workers, "pqkms_audit_flush_records_sum") >= 18 + 2
    assert 0 < total(workers, "pqkms_audit_flush_records_count") <= 20
    assert total(workers, "pqkms_audit_commit_seconds_count") == total(
        workers, "pqkms_audit_flush_records_count")
    assert total(workers, "pqkms_audit_publish_seconds_count") == total(
        workers, "pqkms_audit_flush_records_count")
    assert total(workers, "pqkms_audit_flush_failures_total") == 0

    bridge = scrape(f"{local.http_url}/metrics")
    bridge_requests = "pqkms_bridge_requests_total"
    assert total(bridge, bridge_requests, route=ENCRYPT_ROUTE, status="200") == 1
    assert total(bridge, bridge_requests, route=ENCRYPT_ROUTE, status="401") == 1
    assert total(bridge, bridge_requests, route="unmatched", status="404") == 1
    assert total(bridge, "pqkms_bridge_request_duration_seconds_count",
                 route=ENCRYPT_ROUTE) == 2
    assert total(bridge, "pqkms_bridge_request_duration_seconds_bucket", route=ENCRYPT_ROUTE,
                 le="+Inf") == 2
    assert total(bridge, "pqkms_bridge_nats_failures_total", kind="timeout") == 0


async def test_metrics_stay_out_of_the_openapi_document(
    metered: tuple[LocalStack, list[int]],
) -> None:
    local, _ = metered
    async with httpx.AsyncClient(base_url=local.http_url, timeout=10) as http:
        document = (await http.get("/openapi.json")).json()
    assert "/metrics" not in document["paths"]


async def test_job_chunks_are_counted(metered: tuple[LocalStack, list[int]]) -> None:
    local, ports = metered
    api_key = await local.create_tenant(Plan.ENTERPRISE)
    items = [{"plaintext": b64(b"job item %d" % n)} for n in range(24)]
    items.append({"plaintext": "not base64 at all!"})  # one item fails, not its chunk
    async with await PqkmsClient.connect(local.nats_url, api_key) as client:
        await client.generate_key("Kyber768")
        job_id = await client.submit_job("kem.encrypt", items, key_version=1, chunk_items=10)
        status = await client.wait_for_job(job_id, poll_seconds=0.1, timeout=60)
    assert status["total_chunks"] == 3

    chunks = 0.0
    for _ in range(100):  # a chunk is counted once acked, just after its results exist
        workers = scrape_workers(ports)
        chunks = total(workers, "pqkms_job_chunks_total", outcome="done")
        if chunks >= 3:
            break
        await asyncio.sleep(0.1)
    assert chunks == 3
    job = {"operation": ENCRYPT_BATCH}
    assert total(workers, "pqkms_batch_items_count", source="job", **job) == 3
    assert total(workers, "pqkms_batch_items_sum", source="job", **job) == 25
    assert total(workers, "pqkms_job_items_total", result="succeeded", **job) == 24
    assert total(workers, "pqkms_job_items_total", result="failed", **job) == 1


async def test_bridge_counts_requests_no_worker_answered(
    metered: tuple[LocalStack, list[int]],
) -> None:
    """Last in this module: it stops the workers."""
    local, _ = metered
    api_key = await local.create_tenant(Plan.ENTERPRISE)
    local.stop_workers()
    async with httpx.AsyncClient(base_url=local.http_url, timeout=10) as http:
        reply = await http.post(ENCRYPT_ROUTE, headers={"X-API-Key": api_key},
                                json={"plaintext": b64(b"x"), "key_version": 1})
        assert reply.status_code == 503
    bridge = scrape(f"{local.http_url}/metrics")
    assert total(bridge, "pqkms_bridge_nats_failures_total", kind="no_responders") >= 1
    assert total(bridge, "pqkms_bridge_requests_total", route=ENCRYPT_ROUTE,
                 status="503") == 1


@pytest.mark.parametrize(("error", "kind"), [
    (BridgeError(ErrorCode.TIMEOUT, "No reply from a worker within 10 seconds"), "timeout"),
    (BridgeError(ErrorCode.SERVICE_UNAVAILABLE, NO_WORKER), "no_responders"),
    (BridgeError(ErrorCode.SERVICE_UNAVAILABLE, BUS_LOST), "connection_lost"),
    (BridgeError(ErrorCode.SERVICE_UNAVAILABLE, BUS_DOWN), "disconnected"),
    (BridgeError(ErrorCode.INVALID, "Validation failed: too large"), "too_large"),
])
def test_nats_failure_kinds(error: BridgeError, kind: str) -> None:
    assert nats_failure_kind(error) == kind


def test_pqkms_up_gives_each_worker_its_metrics_port(tmp_path: Path) -> None:
    base = find_free_port()
    while not port_available(base + 1):
        base = find_free_port()
    http_port, nats_port = distinct_free_ports(2)
    up = start_pqkms(
        "up", "--data-dir", str(tmp_path / "data"), "--http-port", str(http_port),
        "--nats-port", str(nats_port), "--workers", "2",
        env=clean_env(PQKMS_METRICS_PORT=str(base)),
    )  # fmt: skip
    try:
        up.wait_for_stdout("pqkms ready:", timeout=90)
        listed = up.wait_for_stdout("metrics:", timeout=10)
        assert f"worker-1 http://127.0.0.1:{base}/metrics" in listed
        assert f"worker-2 http://127.0.0.1:{base + 1}/metrics" in listed
        assert f"bridge http://127.0.0.1:{http_port}/metrics" in listed
        for port in (base, base + 1):
            # Ready means one worker answers; the other may still be starting.
            samples = scrape_when_up(f"http://127.0.0.1:{port}/metrics", seconds=60)
            assert total(samples, "pqkms_requests_total", operation=ENCRYPT, outcome="OK") == 0
        assert up.stop(timeout=60) == 0
    finally:
        up.kill()


def test_metrics_ports_of_pqkms_up() -> None:
    assert worker_metrics_ports(StackSettings(workers=3)) == []
    assert worker_metrics_ports(StackSettings(workers=3, metrics_port=9101)) == [
        9101, 9102, 9103]
    with pytest.raises(StackError, match="past 65535"):
        worker_metrics_ports(StackSettings(workers=2, metrics_port=65535))
