"""PostgreSQL connections cut under load: a 503 to retry, never a 500, and never an item
stored as failed for good.

The worker's database connections are terminated again and again (``pg_terminate_backend``,
as a server restart or a failover does) while batches of signatures and a durable job
run. A request may then fail as a whole with 503; no item may carry ERR_INTERNAL_001,
and the job must finish with every item signed (its chunks done again, not recorded as
failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import nats
import pytest
from sqlalchemy.engine import make_url

from pqkms.client import PqkmsClient
from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import (
    DEFAULT_POSTGRES_URL,
    LocalStack,
    NatsCaller,
    PostgresUnavailable,
    temporary_postgres_database,
)
from tests.support.wire import b64

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ROUNDS_SECONDS = 6.0
CUT_EVERY_SECONDS = 0.25
BATCH_ITEMS = 40
JOB_ITEMS = 400


@pytest.fixture
async def postgres_stack(tmp_path: Path) -> AsyncIterator[tuple[LocalStack, str]]:
    try:
        async with temporary_postgres_database("pqkms_outage") as url:
            stack = LocalStack(tmp_path / "stack", database_url=url, extra_env={
                "PQKMS_JOB_ACK_WAIT_SECONDS": "5",
            })
            try:
                await stack.start(workers=1)
                yield stack, make_url(url).database or ""
            finally:
                stack.stop()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


async def _cut_connections(database: str, stop: asyncio.Event) -> int:
    base = make_url(os.environ.get("PQKMS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    admin = await asyncpg.connect(
        base.set(drivername="postgresql").render_as_string(hide_password=False))
    cut = 0
    try:
        while not stop.is_set():
            cut += len(await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()", database))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CUT_EVERY_SECONDS)
    finally:
        await admin.close()
    return cut


async def _sign_batches(call: NatsCaller, stop: asyncio.Event, outcomes: Counter[str]) -> None:
    items = [{"message": b64(f"m{n}".encode()), "reference": str(n)}
             for n in range(BATCH_ITEMS)]
    while not stop.is_set():
        reply = await call(Subject.SIGNATURE_SIGN_BATCH, {"items": items, "key_version": 1},
                           timeout=30)
        outcomes[reply.code or "OK"] += 1
        if reply.code is None:
            for result in reply.data["results"]:
                outcomes["item " + (result["error"]["code"] if "error" in result else "OK")] += 1
        singles = await asyncio.gather(*(
            call(Subject.SIGNATURE_SIGN, {"message": b64(b"one"), "key_version": 1}, timeout=30)
            for _ in range(8)
        ))
        outcomes.update(reply.code or "OK" for reply in singles)


async def test_cut_database_connections_fail_requests_whole_and_redo_job_chunks(
    postgres_stack: tuple[LocalStack, str],
) -> None:
    stack, database = postgres_stack
    api_key = await stack.create_tenant(Plan.ENTERPRISE)
    connection = await nats.connect(stack.nats_url)
    call = NatsCaller(connection, api_key)
    await call(Subject.KEYS_GENERATE, {"algorithm": "Dilithium3"})
    client = await PqkmsClient.connect(stack.nats_url, api_key)
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    try:
        cutter = asyncio.create_task(_cut_connections(database, stop))
        job_id = await client.submit_job(
            "signature.sign",
            [{"message": b64(f"job-{n}".encode()), "reference": str(n)}
             for n in range(JOB_ITEMS)],
            key_version=1, chunk_items=20,
        )
        batches = asyncio.create_task(_sign_batches(call, stop, outcomes))
        await asyncio.sleep(ROUNDS_SECONDS)
        stop.set()
        await batches
        cut = await cutter
        status = await client.wait_for_job(job_id, timeout=120)
    finally:
        stop.set()
        await client.close()
        await connection.close()

    assert cut > 0
    assert "ERR_INTERNAL_001" not in outcomes and "item ERR_INTERNAL_001" not in outcomes, outcomes
    assert set(outcomes) <= {"OK", "item OK", "ERR_SERVICE_001"}, outcomes
    assert outcomes["OK"] > 0, outcomes
    assert status["state"] == "completed", status
    assert (status["items_done"], status["items_failed"]) == (JOB_ITEMS, 0), status
