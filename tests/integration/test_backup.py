"""``pqkms db backup``: a copy taken while a worker writes is consistent, and a stack
restored from it with the master key decrypts what was encrypted before the backup.

A review's plain copy of the running database file failed SQLite's integrity check
one time in three (docs/deploy.md, "Backup and restore").
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import nats
import pytest

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.cli.processes import run_pqkms
from tests.support.stack import LocalStack, NatsCaller

pytestmark = [pytest.mark.integration, pytest.mark.long]

PLAINTEXT = "cGxhaW50ZXh0IGtlcHQgYWNyb3NzIGEgcmVzdG9yZQ=="


async def _keep_writing(call: NatsCaller, stop: asyncio.Event) -> int:
    """Requests until ``stop``: each one commits an audit record."""
    sent = 0
    while not stop.is_set():
        reply = await call(Subject.KEM_ENCRYPT, {"plaintext": PLAINTEXT, "key_version": 1})
        assert reply.code is None, reply.body
        sent += 1
    return sent


async def test_a_backup_under_load_restores_to_a_stack_that_decrypts_old_ciphertexts(
    tmp_path: Path,
) -> None:
    stack = LocalStack(tmp_path / "stack")
    await stack.start(workers=1)
    client = await nats.connect(stack.nats_url)
    try:
        api_key = await stack.create_tenant(Plan.ENTERPRISE)
        call = NatsCaller(client, api_key)
        assert (await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})).code is None
        sealed = await call(Subject.KEM_ENCRYPT, {"plaintext": PLAINTEXT, "key_version": 1})
        ciphertext = sealed.data["ciphertext"]

        stop = asyncio.Event()
        writers = [asyncio.create_task(_keep_writing(call, stop)) for _ in range(8)]
        await asyncio.sleep(0.5)
        copy = tmp_path / "backup.db"
        made = await asyncio.to_thread(
            run_pqkms, "db", "backup", str(copy), "--data-dir", str(stack.root))
        stop.set()
        assert sum(await asyncio.gather(*writers)) > 0
        assert made.returncode == 0, made.stderr
        assert "backup written" in made.stdout and "kek id(s)" in made.stdout
        assert copy.stat().st_mode & 0o777 == 0o600
        again = run_pqkms("db", "backup", str(copy), "--data-dir", str(stack.root))
        assert again.returncode == 1 and "never overwrites" in again.stderr
    finally:
        await client.close()
        stack.stop()

    with sqlite3.connect(copy) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    restored = LocalStack(tmp_path / "restored")
    restored.root.mkdir()
    shutil.copy(copy, restored.root / "pqkms.db")
    shutil.copy(stack.master_key_file, restored.master_key_file)
    await restored.start(workers=1)
    client = await nats.connect(restored.nats_url)
    try:
        opened = await NatsCaller(client, api_key)(
            Subject.KEM_DECRYPT, {"ciphertext": ciphertext, "key_version": 1})
        assert opened.code is None, opened.body
        assert opened.data["plaintext"] == PLAINTEXT
    finally:
        await client.close()
        restored.stop()


def test_postgresql_is_pointed_to_pg_dump(tmp_path: Path) -> None:
    target = tmp_path / "never-written.db"
    result = run_pqkms("db", "backup", str(target),
                       "--database-url", "postgresql+asyncpg://postgres@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "pg_dump" in result.stderr
    assert not target.exists()
