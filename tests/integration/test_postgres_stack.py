"""The worker path on PostgreSQL: four worker processes, one database, one truth."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nats
import pytest
from sqlalchemy.engine import make_url

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def postgres_database() -> AsyncIterator[str]:
    """A database of its own for this test, dropped afterwards."""
    base = make_url(os.environ.get("PQKMS_TEST_POSTGRES_URL", DEFAULT_URL))
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable ({type(exc).__name__})")
    name = f"pqkms_it_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_four_workers_on_postgres(tmp_path: Path, postgres_database: str) -> None:
    stack = LocalStack(tmp_path / "stack", database_url=postgres_database)
    await stack.start(workers=4)
    try:
        client = await nats.connect(stack.nats_url)
        call = NatsCaller(client, await stack.create_tenant(Plan.ENTERPRISE))
        await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
        sealed = await asyncio.gather(*(
            call(Subject.KEM_ENCRYPT, {"plaintext": base64.b64encode(bytes([i])).decode(),
                                       "key_version": 1}) for i in range(40)))
        opened = await asyncio.gather(*(
            call(Subject.KEM_DECRYPT, {"ciphertext": reply.data["ciphertext"], "key_version": 1})
            for reply in sealed))
        assert [base64.b64decode(r.data["plaintext"]) for r in opened] == [
            bytes([i]) for i in range(40)]
        rotations = await asyncio.gather(*(
            call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"}, timeout=60) for _ in range(20)))
        assert sorted(r.data["key_version"] for r in rotations) == list(range(2, 22))
        listed = await call(Subject.KEYS_LIST, {"algorithm": "Kyber768"})
        assert [k["status"] for k in listed.data["keys"]].count("active") == 1
        assert [k["key_version"] for k in listed.data["keys"]] == list(range(1, 22))
        # A retire answered by one worker is honoured by every worker next.
        await call(Subject.KEYS_ARCHIVE, {"algorithm": "Kyber768", "key_version": 1})
        after = await asyncio.gather(*(
            call(Subject.KEM_DECRYPT, {"ciphertext": sealed[0].data["ciphertext"],
                                       "key_version": 1}) for _ in range(12)))
        assert {reply.code for reply in after} == {"ERR_FORBIDDEN_001"}
        await client.close()
    finally:
        stack.stop()
