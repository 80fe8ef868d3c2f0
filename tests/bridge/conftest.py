"""Fixtures for the bridge tests: a real nats-server, a real HTTP bridge, a fake worker.

The fake worker (``fake_worker.py``) stands in for the real one, which is tested
end to end elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from pqkms.nats_embedded import EmbeddedNats

from .fake_worker import FakeWorker
from .live import LiveBridge

API_KEY = "qph_test_key"


@pytest.fixture(scope="session")
def bridge(nats_server: EmbeddedNats) -> Iterator[LiveBridge]:
    """One live bridge for the session (request timeout 1 s), connected to NATS."""
    live = LiveBridge.for_nats(nats_server.url).start()
    wait_until(lambda: httpx.get(f"{live.url}/healthz").json()["nats"] == "connected")
    yield live
    live.stop()


@pytest.fixture
def worker(nats_server: EmbeddedNats) -> Iterator[FakeWorker]:
    """A fake worker in echo mode; gone after the test."""
    fake = FakeWorker(nats_server.url).start()
    yield fake
    fake.stop()


@pytest.fixture
def realistic_worker(nats_server: EmbeddedNats) -> Iterator[FakeWorker]:
    """A fake worker that validates bodies and answers plausible results."""
    fake = FakeWorker(nats_server.url, mode="realistic").start()
    yield fake
    fake.stop()


@pytest.fixture
async def client(bridge: LiveBridge) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the live bridge."""
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        yield http


def wait_until(condition: object, timeout: float = 15.0, interval: float = 0.05) -> None:
    """Poll a callable until it returns truthy (exceptions count as falsy)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@pytest.fixture
def tmp_nats_dir(tmp_path: Path) -> Path:
    """A store directory for a test's own nats-server."""
    return tmp_path / "nats"
