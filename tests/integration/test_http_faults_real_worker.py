"""Bridge faults with real worker processes: none running → 503, back → 200."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from schemas.algorithms import Plan
from tests.support.stack import LocalStack

pytestmark = pytest.mark.integration


async def test_worker_stopped_then_back(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack")
    await stack.start(workers=1, bridge=True)
    try:
        api_key = await stack.create_tenant(Plan.ENTERPRISE)
        headers = {"X-API-Key": api_key}
        async with httpx.AsyncClient(base_url=stack.http_url, headers=headers) as http:
            assert (await http.get("/api/v1/kms/keys")).status_code == 200
            stack.stop_workers()
            down = await http.get("/api/v1/kms/keys")
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "ERR_SERVICE_001"
            assert (await http.get("/healthz")).status_code == 503
            stack.start_worker()
            await stack.wait_for_workers(1)
            for _ in range(50):
                back = await http.get("/api/v1/kms/keys")
                if back.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert back.status_code == 200
            assert (await http.get("/healthz")).status_code == 200
    finally:
        stack.stop()
