"""An API key rotated with ``pqkms tenant api-key`` against running workers: the new key
works at once, the revoked one is refused within the workers' 10 s memory of it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from pqkms.client import PqkmsClient, PqkmsError
from schemas.algorithms import Plan
from tests.cli.processes import clean_env, run_pqkms
from tests.support.stack import LocalStack
from worker.store import KeyStore, load_or_create_master_key

pytestmark = [pytest.mark.integration, pytest.mark.long]

# Workers remember an API key for 10 s (worker/services/auth.py); margin for a slow host.
REVOCATION_WAIT_SECONDS = 20


async def _tenant_named(stack: LocalStack, name: str) -> str:
    master = load_or_create_master_key(stack.master_key_file, create=False)
    store = await KeyStore.open(stack.db_url, master, create_schema=False)
    try:
        _, api_key = await store.create_tenant(name, Plan.PRO)
    finally:
        await store.close()
    return api_key


async def test_a_revoked_api_key_is_refused_and_its_successor_works(stack: LocalStack) -> None:
    name = f"rotating-{uuid.uuid4().hex[:8]}"
    old_key = await _tenant_named(stack, name)
    store = ("--database-url", stack.db_url, "--master-key-file", str(stack.master_key_file))
    env = clean_env()
    async with await PqkmsClient.connect(stack.nats_url, old_key) as old:
        await old.generate_key("Kyber768")
        await old.encrypt(b"before", 1)  # the workers now remember the old key

        added = await asyncio.to_thread(run_pqkms, "tenant", "api-key", "add", name, *store,
                                        env=env)
        assert added.returncode == 0, added.stderr
        new_key = json.loads(added.stdout)["api_key"]
        revoked = await asyncio.to_thread(run_pqkms, "tenant", "api-key", "revoke", name,
                                          *store, env=env, stdin=old_key + "\n")
        assert revoked.returncode == 0, revoked.stderr

        async with await PqkmsClient.connect(stack.nats_url, new_key) as new:
            assert (await new.encrypt(b"after", 1))["key_version"] == 1
        deadline = time.monotonic() + REVOCATION_WAIT_SECONDS
        while True:
            try:
                await old.encrypt(b"still?", 1)
            except PqkmsError as refused:
                assert refused.code == "ERR_AUTH_001"
                break
            assert time.monotonic() < deadline, "the revoked key is still accepted"
            await asyncio.sleep(0.5)
