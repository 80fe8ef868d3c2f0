"""``GET /healthz``: 200 only with NATS connected and a worker answering."""

from __future__ import annotations

import httpx

from .fake_worker import FakeWorker


async def test_healthy_with_a_worker(client: httpx.AsyncClient, worker: FakeWorker) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "nats": "connected", "workers": "responding"}
    assert worker.requests_on("pqkms.v1.health.ping")


async def test_unhealthy_without_a_worker(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "nats": "connected",
                               "workers": "not responding"}


async def test_unhealthy_when_the_worker_says_so(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.healthy = False
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["workers"] == "not responding"


async def test_unhealthy_when_the_worker_is_too_slow(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.delay_seconds = 1.5
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["workers"] == "not responding"


async def test_unavailable_when_the_worker_cannot_reach_its_database(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.health = {"status": "degraded", "database": "unavailable", "audit": "ok",
                     "worker": "fake"}
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "nats": "connected",
                               "workers": "degraded", "database": "unavailable",
                               "audit": "ok"}


async def test_a_worker_s_own_words_are_not_repeated(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.health = {"status": "degraded", "database": "<script>", "audit": ["x"]}
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "unknown"
    assert response.json()["audit"] == "unknown"
