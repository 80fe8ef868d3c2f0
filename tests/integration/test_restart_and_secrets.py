"""Durability across restarts, master-key checks, and no secrets in any log line."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64

pytestmark = pytest.mark.integration



async def test_restart_keeps_keys_and_old_ciphertexts_decrypt(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack")
    await stack.start(workers=1)
    try:
        api_key = await stack.create_tenant(Plan.PRO)
        client = await nats.connect(stack.nats_url)
        call = NatsCaller(client, api_key)
        await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
        await call(Subject.KEYS_GENERATE, {"algorithm": "Dilithium3"})
        encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"keep me"),
                                                     "key_version": 1})
        signed = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1})
        wrapped = await call(Subject.KEM_KEY_WRAP, {"symmetric_key": b64(b"k" * 32),
                                                    "key_version": 1})
        await client.close()
    finally:
        stack.stop()

    # Same data directory, new processes, new NATS port.
    stack.nats_port = 0
    await stack.start(workers=1)
    try:
        client = await nats.connect(stack.nats_url)
        call = NatsCaller(client, api_key)
        decrypted = await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                                     "key_version": 1})
        assert base64.b64decode(decrypted.data["plaintext"]) == b"keep me"
        verified = await call(Subject.SIGNATURE_VERIFY, {"message": b64(b"m"), "key_version": 1,
                                                         "signature": signed.data["signature"]})
        assert verified.data["valid"] is True
        unwrapped = await call(Subject.KEM_KEY_UNWRAP, {"wrapped_key": wrapped.data["wrapped_key"],
                                                        "key_version": 1})
        assert base64.b64decode(unwrapped.data["symmetric_key"]) == b"k" * 32
        listed = await call(Subject.KEYS_LIST, {})
        assert listed.data["total"] == 2
        await client.close()
    finally:
        stack.stop()


async def test_worker_refuses_a_wrong_master_key(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack")
    stack.root.mkdir(parents=True)
    stack.start_nats()
    try:
        await stack.init_store()
        wrong = tmp_path / "wrong.key"
        wrong.write_text(base64.b64encode(b"\x01" * 32).decode() + "\n")
        wrong.chmod(0o600)
        env = {**stack.env(), "PQKMS_MASTER_KEY_FILE": str(wrong), "PQKMS_LOG_JSON": "true"}
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "worker"], env=env, capture_output=True,
            timeout=60, check=False,
        )
        assert result.returncode != 0
        assert b"master key does not match" in result.stderr
        assert base64.b64encode(b"\x01" * 32) not in result.stderr
    finally:
        stack.stop()


async def test_no_secret_reaches_any_log(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack", extra_env={"PQKMS_LOG_LEVEL": "DEBUG"})
    await stack.start(workers=1)
    secrets: list[bytes] = []
    try:
        api_key = await stack.create_tenant(Plan.ENTERPRISE)
        secrets.append(api_key.encode())
        client = await nats.connect(stack.nats_url)
        call = NatsCaller(client, api_key)
        await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
        await call(Subject.KEYS_GENERATE, {"algorithm": "Dilithium3"})
        plaintext = b"PLAINTEXT-MARKER-0123456789"
        encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(plaintext),
                                                     "key_version": 1})
        await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                         "key_version": 1})
        encapsulated = await call(Subject.KEM_ENCAPSULATE, {"key_version": 1})
        wrapped_key = b"WRAPPED-KEY-MARKER-0123456789ab"
        await call(Subject.KEM_KEY_WRAP, {"symmetric_key": b64(wrapped_key), "key_version": 1})
        message = b"MESSAGE-MARKER"
        await call(Subject.SIGNATURE_SIGN, {"message": b64(message), "key_version": 1})
        # failures must not leak either
        await call.raw(Subject.KEM_ENCRYPT, b'{"plaintext": "' + b64(plaintext).encode()
                       + b'", "key_version": 99}')
        await NatsCaller(client, api_key + "x")(Subject.KEYS_LIST, {})
        await client.close()
        secrets += [plaintext, b64(plaintext).encode(), wrapped_key, b64(wrapped_key).encode(),
                    message, b64(message).encode(),
                    encapsulated.data["shared_secret"].encode()]
    finally:
        stack.stop()
    logs = b"".join(path.read_bytes() for path in stack.root.glob("*.log"))
    assert re.search(rb'"event": ?"request"', logs)  # the logs were written at all
    for secret in secrets:
        assert secret not in logs
    # Seeds never leave the database wrapped form: no 64-hex or base64 seeds either.
    from worker.store import KeyStore, load_or_create_master_key

    store = await KeyStore.open(stack.db_url, load_or_create_master_key(stack.master_key_file,
                                                                       create=False))
    try:
        tenant = await store.authenticate(api_key)
        assert tenant is not None
        for algorithm in ("Kyber768", "Dilithium3"):
            from schemas.algorithms import Algorithm

            loaded = await store.load_seed(tenant.tenant_id, Algorithm(algorithm), 1)
            assert loaded is not None
            seed = loaded[1]
            for form in (seed, seed.hex().encode(), base64.b64encode(seed)):
                assert form not in logs
                assert form not in stack.db_path_bytes()
    finally:
        await store.close()
