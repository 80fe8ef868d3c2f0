"""Health says "unavailable" when workers answer pings but cannot serve requests.

A review found ``/healthz`` and ``pqkms health`` at "ok" while every request failed (a
schema without its API key table: 500) or timed out (SQLite's write lock held
elsewhere: the audit commit waits). Both checks now see it, and recover with the
database, with a real worker, nats-server and bridge.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest

from pqkms.health import ping_workers
from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.cli.processes import run_pqkms
from tests.support.stack import LocalStack, NatsCaller

pytestmark = [pytest.mark.integration, pytest.mark.long]

REQUEST_TIMEOUT_SECONDS = 2.0  # a commit is "stalled" after half of it


async def _ping(stack: LocalStack) -> dict[str, Any]:
    client = await nats.connect(stack.nats_url)
    try:
        reply = await client.request(Subject.HEALTH_PING.value, b"{}", timeout=5)
    finally:
        await client.close()
    data: dict[str, Any] = orjson.loads(reply.data)["data"]
    return data


async def _healthz(stack: LocalStack) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{stack.http_url}/healthz", timeout=5)


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.2)


def _sql(database: Path, statement: str) -> None:
    connection = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        connection.execute(statement)
    finally:
        connection.close()


async def test_a_database_without_its_tables_makes_health_fail_until_repaired(
    tmp_path: Path,
) -> None:
    stack = LocalStack(tmp_path / "stack")
    await stack.start(workers=1, bridge=True)
    try:
        assert (await _ping(stack))["status"] == "ok"
        database = stack.root / "pqkms.db"
        _sql(database, "ALTER TABLE pqkms_api_key RENAME TO pqkms_api_key_moved")

        async def degraded() -> bool:
            return (await _ping(stack))["status"] == "degraded"

        await _until(degraded)
        assert (await _ping(stack))["database"] == "unavailable"
        response = await _healthz(stack)
        assert response.status_code == 503
        assert response.json()["workers"] == "degraded"
        assert response.json()["database"] == "unavailable"
        assert not await ping_workers(stack.nats_url, time_limit=3)
        told = await asyncio.to_thread(run_pqkms, "health", "--nats-url", stack.nats_url)
        assert told.returncode == 1
        assert "unhealthy: a worker answered degraded (database unavailable, audit ok)" \
            in told.stderr

        _sql(database, "ALTER TABLE pqkms_api_key_moved RENAME TO pqkms_api_key")

        async def healthy() -> bool:
            return (await _healthz(stack)).status_code == 200

        await _until(healthy)
        assert await ping_workers(stack.nats_url, time_limit=3)

        async def logged() -> bool:  # (the worker writes its log every FLUSH_SECONDS)
            worker_log = (stack.root / "worker-0.log").read_text()
            return "database_unavailable" in worker_log and "database_available" in worker_log

        await _until(logged)
    finally:
        stack.stop()


def _hold_write_lock(database: Path, held: threading.Event, release: threading.Event) -> None:
    connection = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        connection.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(30)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


async def test_an_audit_commit_held_up_by_a_lock_makes_health_fail_while_it_lasts(
    tmp_path: Path,
) -> None:
    stack = LocalStack(tmp_path / "stack", extra_env={
        "PQKMS_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT_SECONDS),
    })
    await stack.start(workers=1, bridge=True)
    client = await nats.connect(stack.nats_url)
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock,
                              args=(stack.root / "pqkms.db", held, release))
    try:
        api_key = await stack.create_tenant(Plan.ENTERPRISE)
        call = NatsCaller(client, api_key)
        listed = await call(Subject.KEYS_LIST, {})
        assert listed.code is None, listed.body
        holder.start()
        assert await asyncio.to_thread(held.wait, 10)
        # A request now waits for its audit record's commit, which waits for the lock.
        waiting = asyncio.create_task(call(Subject.KEYS_LIST, {}, timeout=60))

        async def stalled() -> bool:
            return (await _ping(stack)).get("audit") == "stalled"

        await _until(stalled)
        response = await _healthz(stack)
        assert response.status_code == 503
        assert response.json()["audit"] == "stalled"

        release.set()
        await waiting

        async def healthy() -> bool:
            return (await _healthz(stack)).status_code == 200

        await _until(healthy)
    finally:
        release.set()
        if holder.is_alive():
            await asyncio.to_thread(holder.join)
        await client.close()
        stack.stop()
