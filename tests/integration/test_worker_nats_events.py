"""A nats-server outage is visible in the worker's log and on both /metrics.

A review killed nats-server under a running stack for 22 s: the worker's log said only
one plain-text FastStream line, and its /metrics nothing at all. Here nats-server is
killed (SIGKILL) under a worker and the bridge, then started again on the same port:
the worker logs ``nats_disconnected`` and ``nats_reconnected`` (JSON, with the server's
URL without the password it was given), and ``pqkms_nats_connected`` goes 1 → 0 → 1 on
the worker's metrics port and on the bridge's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pqkms.nats_embedded import find_free_port
from tests.support.stack import LocalStack

pytestmark = pytest.mark.integration

PASSWORD = "NatsPwZQXMARKER7f3a9c"  # nats-server without accounts accepts any password
WAIT_SECONDS = 20.0


def _connected(url: str) -> float | None:
    """``pqkms_nats_connected`` at ``url``; ``None`` while the page does not answer."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pqkms_nats_connected":
                return sample.value
    raise AssertionError(f"no pqkms_nats_connected at {url}")


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_bytes().splitlines():
        if name.encode() not in line:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # (every line is JSON: asserted at the end of the test)
        if isinstance(event, dict) and event.get("event") == name:
            found.append(event)
    return found


async def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_SECONDS:g} s: {what}")
        await asyncio.sleep(0.1)


async def test_a_nats_outage_is_logged_by_the_worker_and_exported_by_both(
    tmp_path: Path,
) -> None:
    stack = LocalStack(tmp_path / "stack")
    stack.nats_port = find_free_port()
    metrics_port = find_free_port()
    server = f"nats://127.0.0.1:{stack.nats_port}"
    try:
        await stack.start(workers=0)
        stack.extra_env["PQKMS_NATS_URL"] = f"nats://pqkms:{PASSWORD}@127.0.0.1:{stack.nats_port}"
        stack.extra_env["PQKMS_METRICS_PORT"] = str(metrics_port)
        worker = stack.start_worker()
        del stack.extra_env["PQKMS_METRICS_PORT"]  # the bridge serves its own on HTTP
        await stack.wait_for_workers(1)
        stack.start_bridge()
        await stack.wait_for_bridge()
        log = stack.worker_logs[worker.pid]
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        bridge_metrics = f"{stack.http_url}/metrics"
        assert _connected(worker_metrics) == 1
        assert _connected(bridge_metrics) == 1
        assert not _events(log, "nats_disconnected")

        assert stack.nats is not None
        stack.nats.process.kill()  # as an OOM kill or a crash would
        stack.nats.process.wait()
        stack.nats = None
        await _until("the worker logs nats_disconnected",
                     lambda: bool(_events(log, "nats_disconnected")))
        await _until("the worker's gauge is 0", lambda: _connected(worker_metrics) == 0)
        await _until("the bridge's gauge is 0", lambda: _connected(bridge_metrics) == 0)
        (lost,) = _events(log, "nats_disconnected")
        assert lost["component"] == "worker" and lost["url"] == server
        assert lost["level"] == "warning"

        stack.start_nats()  # the same port, the same JetStream store
        await _until("the worker logs nats_reconnected",
                     lambda: bool(_events(log, "nats_reconnected")))
        await _until("the worker's gauge is 1", lambda: _connected(worker_metrics) == 1)
        await _until("the bridge's gauge is 1", lambda: _connected(bridge_metrics) == 1)
        (back,) = _events(log, "nats_reconnected")
        assert back["component"] == "worker" and back["url"] == server
        assert back["down_seconds"] > 0
        await stack.wait_for_workers(1)  # and it serves again
    finally:
        stack.stop()
    text = log.read_text(errors="replace")
    assert PASSWORD not in text
    # A clean stop closes the connection on purpose: no outage is reported for it.
    assert len(_events(log, "nats_disconnected")) == 1
    # Every line of both logs is JSON, FastStream's and uvicorn's own lines included
    # (they were coloured or plain text), through the outage and the stops.
    for path in (log, stack.root / "bridge.log"):
        lines = path.read_bytes().splitlines()
        assert lines
        assert all(isinstance(orjson.loads(line), dict) for line in lines), path
    assert any(line["logger"].startswith(("pqkms.faststream", "uvicorn"))
               for path in (log, stack.root / "bridge.log")
               for line in map(orjson.loads, path.read_bytes().splitlines()) if "logger" in line)
