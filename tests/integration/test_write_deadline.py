"""A key change that waited past its deadline for the database does not happen.

Another process holds SQLite's write lock for longer than a caller waits. The rotation
sent meanwhile must be refused with 503 and never happen, even once the lock is freed:
before, it waited up to 30 s for the lock, rotated after its caller had given up, and a
retry would have rotated a second time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import nats
import pytest

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_SECONDS = 3.0  # the deadline is 4/5 of it
LOCK_HELD_SECONDS = 6.0


def _hold_write_lock(database: Path, held: threading.Event, seconds: float) -> None:
    connection = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        connection.execute("BEGIN IMMEDIATE")
        held.set()
        threading.Event().wait(seconds)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


async def test_a_rotation_that_cannot_start_in_time_does_not_happen(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack", extra_env={
        "PQKMS_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT_SECONDS),
    })
    await stack.start(workers=1)
    try:
        api_key = await stack.create_tenant(Plan.ENTERPRISE)
        client = await nats.connect(stack.nats_url)
        call = NatsCaller(client, api_key)
        await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})

        held = threading.Event()
        holder = threading.Thread(target=_hold_write_lock,
                                  args=(stack.root / "pqkms.db", held, LOCK_HELD_SECONDS))
        holder.start()
        assert await asyncio.to_thread(held.wait, 10)
        refused = await call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"}, timeout=60)
        await asyncio.to_thread(holder.join)

        assert refused.code == "ERR_SERVICE_001", refused.body
        assert "nothing was changed" in refused.body["error"]["message"]
        listed = await call(Subject.KEYS_LIST, {"algorithm": "Kyber768"})
        assert [key["key_version"] for key in listed.data["keys"]] == [1]
        # Free again: the next rotation goes through.
        rotated = await call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"})
        assert rotated.data["key_version"] == 2
        await client.close()
    finally:
        stack.stop()
