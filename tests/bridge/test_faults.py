"""Bus and worker faults: 503 without a worker, 504 when slow, recovery from NATS outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pqkms import nats_embedded
from pqkms.nats_embedded import EmbeddedNats, find_free_port, start_nats_server

from .fake_worker import FakeWorker
from .live import LiveBridge


async def test_no_worker_is_a_503(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1},
                                 headers={"X-Request-ID": "rid-503"})
    assert time.monotonic() - started < 0.9  # no-responders is immediate, not a timeout
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == body["error"]["error_code"] == "ERR_SERVICE_001"
    assert body["error"]["message"] == "No worker is available; try again shortly"
    assert body["request_id"] == response.headers["X-Request-ID"] == "rid-503"


async def test_slow_worker_is_a_504(
    bridge: LiveBridge, client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    worker.delay_seconds = bridge.settings.request_timeout_seconds + 0.5
    started = time.monotonic()
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1})
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "ERR_TIMEOUT_001"
    assert bridge.settings.request_timeout_seconds <= elapsed < worker.delay_seconds + 0.5


async def test_worker_back_after_a_503(
    nats_server: EmbeddedNats, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/api/v1/kms/keys")).status_code == 503
    fake = FakeWorker(nats_server.url).start()
    try:
        assert (await client.get("/api/v1/kms/keys")).status_code == 200
    finally:
        fake.stop()
    assert (await client.get("/api/v1/kms/keys")).status_code == 503


# --- the bridge's own NATS server, to stop and start it ---------------------------------


class Stack:
    """A nats-server that can be stopped and started on a fixed port, and a bridge."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = find_free_port()
        self.nats: EmbeddedNats | None = None
        self.bridge = LiveBridge.for_nats(f"nats://127.0.0.1:{self.port}")

    def start_nats(self) -> None:
        self.nats = start_nats_server(self.store, port=self.port)

    def stop_nats(self) -> None:
        if self.nats is not None:
            self.nats.stop()
            self.nats = None


@pytest.fixture
def own_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    # After a stop, the server's old connections sit in TIME_WAIT on the port;
    # nats-server rebinds it (SO_REUSEADDR) but port_is_free's plain bind() says no.
    monkeypatch.setattr(nats_embedded, "port_is_free", lambda port, host="127.0.0.1": True)
    own = Stack(tmp_path / "nats")
    yield own
    own.bridge.stop()
    own.stop_nats()


async def wait_for_status(http: httpx.AsyncClient, url: str, status: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = await http.get(url)
        if last.status_code == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} still {last.status_code if last else None}: {last and last.text}")


async def test_nats_down_at_start_then_up(own_stack: Stack) -> None:
    own_stack.bridge.start()  # NATS is not running yet: the bridge must start anyway
    async with httpx.AsyncClient(base_url=own_stack.bridge.url) as http:
        response = await http.get("/api/v1/kms/keys")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "ERR_SERVICE_001"
        assert response.json()["error"]["message"].startswith("The message bus is unavailable")
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "nats": "disconnected",
                                 "workers": "unknown"}

        own_stack.start_nats()
        assert own_stack.nats is not None
        fake = FakeWorker(own_stack.nats.url).start()
        try:
            await wait_for_status(http, "/api/v1/kms/keys", 200, 15)
            assert (await http.get("/healthz")).json()["status"] == "ok"
        finally:
            fake.stop()


async def test_nats_restart_under_load_fails_cleanly_then_recovers(own_stack: Stack) -> None:
    own_stack.start_nats()
    assert own_stack.nats is not None
    own_stack.bridge.start()
    fake = FakeWorker(own_stack.nats.url).start()
    statuses: list[int] = []
    codes: set[str] = set()
    stop = asyncio.Event()

    async def load(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response = await http.post("/api/v1/signature/sign", json={"key_version": 1})
            statuses.append(response.status_code)
            body = response.json()  # always JSON, whatever happened
            assert response.headers["X-Request-ID"] == body["request_id"]
            if response.status_code != 200:
                codes.add(body["error"]["code"])
            await asyncio.sleep(0.005)

    try:
        async with httpx.AsyncClient(base_url=own_stack.bridge.url, timeout=10) as http:
            await wait_for_status(http, "/api/v1/kms/keys", 200, 15)
            workers = [asyncio.create_task(load(http)) for _ in range(8)]
            await asyncio.sleep(0.3)
            own_stack.stop_nats()
            await asyncio.sleep(0.5)
            down = await http.get("/api/v1/kms/keys")
            assert down.status_code == 503
            assert (await http.get("/healthz")).json()["nats"] == "disconnected"
            own_stack.start_nats()
            await wait_for_status(http, "/api/v1/kms/keys", 200, 15)
            recovered_at = len(statuses)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
    finally:
        fake.stop()
    assert 200 in statuses[:recovered_at]
    assert all(status in (200, 503, 504) for status in statuses)
    assert codes <= {"ERR_SERVICE_001", "ERR_TIMEOUT_001"}
    assert 503 in statuses
    # After recovery every request succeeds again.
    assert statuses[recovered_at:] and set(statuses[recovered_at + 8:]) == {200}
