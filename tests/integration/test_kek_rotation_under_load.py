"""`pqkms master-key rotate` while two workers serve a steady load: nothing fails."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import nats
import pytest
from sqlalchemy.engine import make_url

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64, unb64
from worker.store import KeyStore, load_keyring
from worker.store.kek_rotation import kek_usage

pytestmark = [pytest.mark.integration, pytest.mark.long]

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TIMEOUT = 60.0  # per request: a loaded two-core machine, not a measurement
ITERATIONS_AFTER_ROTATION = 12


@dataclass
class TenantLoad:
    """One tenant driven by one sequential loop, so it always knows its active versions."""

    call: NatsCaller
    kem_version: int = 1
    signature_version: int = 1
    old_ciphertexts: list[tuple[str, int, bytes]] = field(default_factory=list)
    old_signatures: list[tuple[bytes, int, str]] = field(default_factory=list)


async def _ok(call: NatsCaller, subject: Subject, body: dict[str, object],
              failures: list[str]) -> dict[str, object] | None:
    try:
        reply = await call(subject, body, timeout=TIMEOUT)
    except Exception as exc:  # a timeout or a lost reply is a failed request too
        failures.append(f"{subject}: {type(exc).__name__}")
        return None
    if reply.code is not None:
        failures.append(f"{subject}: {reply.code} {reply.body['error'].get('message')}")
        return None
    return reply.data


async def _round_trip(load: TenantLoad, number: int, failures: list[str]) -> None:
    plaintext = f"live {number}".encode()
    sealed = await _ok(load.call, Subject.KEM_ENCRYPT,
                       {"plaintext": b64(plaintext), "key_version": load.kem_version}, failures)
    if sealed is not None:
        opened = await _ok(load.call, Subject.KEM_DECRYPT,
                           {"ciphertext": sealed["ciphertext"],
                            "key_version": load.kem_version}, failures)
        if opened is not None and unb64(str(opened["plaintext"])) != plaintext:
            failures.append("decrypt returned another plaintext")
    message = f"message {number}".encode()
    signed = await _ok(load.call, Subject.SIGNATURE_SIGN,
                       {"message": b64(message), "key_version": load.signature_version},
                       failures)
    if signed is not None:
        verified = await _ok(load.call, Subject.SIGNATURE_VERIFY,
                             {"message": b64(message), "key_version": load.signature_version,
                              "signature": signed["signature"]}, failures)
        if verified is not None and verified["valid"] is not True:
            failures.append("a fresh signature did not verify")


async def _check_old(load: TenantLoad, failures: list[str]) -> None:
    for ciphertext, version, plaintext in load.old_ciphertexts:
        opened = await _ok(load.call, Subject.KEM_DECRYPT,
                           {"ciphertext": ciphertext, "key_version": version}, failures)
        if opened is not None and unb64(str(opened["plaintext"])) != plaintext:
            failures.append("an old ciphertext decrypted to another plaintext")
    for message, version, signature in load.old_signatures:
        verified = await _ok(load.call, Subject.SIGNATURE_VERIFY,
                             {"message": b64(message), "key_version": version,
                              "signature": signature}, failures)
        if verified is not None and verified["valid"] is not True:
            failures.append("an old signature no longer verifies")


async def _generate_both(load: TenantLoad, failures: list[str]) -> None:
    for algorithm in ("Kyber768", "Dilithium3"):
        await _ok(load.call, Subject.KEYS_GENERATE, {"algorithm": algorithm}, failures)


async def _drive(load: TenantLoad, spares: list[TenantLoad], rotated: asyncio.Event,
                 failures: list[str]) -> None:
    """Encrypt/decrypt/sign/verify, old ciphertexts, now and then a key rotation or a
    new tenant's first keys, until a few rounds after the master key rotation."""
    number = after = 0
    while after < ITERATIONS_AFTER_ROTATION:
        if rotated.is_set():
            after += 1
        number += 1
        await _round_trip(load, number, failures)
        if number % 3 == 0:
            await _check_old(load, failures)
        if number % 4 == 0:
            rotation = await _ok(load.call, Subject.KEYS_ROTATE, {"algorithm": "Kyber768"},
                                 failures)
            if rotation is not None:
                load.kem_version = int(str(rotation["key_version"]))
        if number % 5 == 0:
            rotation = await _ok(load.call, Subject.KEYS_ROTATE, {"algorithm": "Dilithium3"},
                                 failures)
            if rotation is not None:
                load.signature_version = int(str(rotation["key_version"]))
        if number % 6 == 0 and spares:
            spare = spares.pop()
            await _generate_both(spare, failures)
            await _round_trip(spare, number, failures)


async def _pqkms(stack: LocalStack, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pqkms", *args, env=stack.env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """``None`` (the stack's SQLite file), or a PostgreSQL database of its own, dropped
    afterwards (skipped when PostgreSQL does not answer)."""
    if request.param == "sqlite":
        yield None
        return
    base = make_url(os.environ.get("PQKMS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable ({type(exc).__name__})")
    name = f"pqkms_kek_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_master_key_rotation_under_load(tmp_path: Path, database_url: str | None) -> None:
    stack = LocalStack(tmp_path / "stack", database_url=database_url)
    await stack.start(workers=2)
    try:
        client = await nats.connect(stack.nats_url)
        failures: list[str] = []
        loads = [TenantLoad(NatsCaller(client, await stack.create_tenant(Plan.ENTERPRISE)))
                 for _ in range(3)]
        spares = [[TenantLoad(NatsCaller(client, await stack.create_tenant(Plan.ENTERPRISE)))
                   for _ in range(2)] for _ in loads]
        for load in loads:
            await _generate_both(load, failures)
            for index in range(4):
                plaintext = f"old {index}".encode() * (index + 1)
                sealed = await _ok(load.call, Subject.KEM_ENCRYPT,
                                   {"plaintext": b64(plaintext), "key_version": 1}, failures)
                assert sealed is not None
                load.old_ciphertexts.append((str(sealed["ciphertext"]), 1, plaintext))
            signed = await _ok(load.call, Subject.SIGNATURE_SIGN,
                               {"message": b64(b"old message"), "key_version": 1}, failures)
            assert signed is not None
            load.old_signatures.append((b"old message", 1, str(signed["signature"])))
        assert failures == []
        old_key = load_keyring(stack.master_key_file).primary
        old_kek = old_key.kek_id

        rotated = asyncio.Event()
        drivers = [asyncio.create_task(_drive(load, spare, rotated, failures))
                   for load, spare in zip(loads, spares, strict=True)]
        try:
            code, out, err = await _pqkms(stack, "master-key", "rotate", "--batch-size", "3")
        finally:
            rotated.set()
            await asyncio.gather(*drivers)

        assert code == 0, err
        report = json.loads(out)
        new_kek = report["kek_id"]
        assert report["previous_kek_id"] == old_kek != new_kek
        assert report["rewrapped"] > 0 and report["remaining_under_old_keys"] == 0
        assert failures == []
        for load in loads:
            await _check_old(load, failures)
        assert failures == []

        # Every stored seed is now under the new KEK, including those created meanwhile.
        store = await KeyStore.open(stack.db_url, load_keyring(stack.master_key_file),
                                    create_schema=False)
        try:
            usage = await kek_usage(store.engine)
        finally:
            await store.close()
        assert set(usage) == {new_kek}

        # The old key can go; the workers keep serving old ciphertexts without it.
        code, out, err = await _pqkms(stack, "master-key", "prune")
        assert code == 0, err
        assert json.loads(out)["dropped"] == [old_kek]
        for load in loads:
            await _check_old(load, failures)
            await _round_trip(load, 0, failures)
        assert failures == []
        await client.close()
    finally:
        stack.stop()

    logs = b"".join(path.read_bytes() for path in stack.root.glob("*.log"))
    assert b"master_keyring_reloaded" in logs
    for key in (old_key, *load_keyring(stack.master_key_file).keys):
        assert base64.b64encode(key.key) not in logs
        assert key.key.hex().encode() not in logs
