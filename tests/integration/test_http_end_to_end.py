"""The official qpher SDK and the seed's cURL workflow against the real stack over HTTP.

nats-server, two worker processes and the bridge process from the session ``stack``.
"""

from __future__ import annotations

import base64
import hashlib
import uuid

import httpx
import pytest
from qpher import Qpher
from qpher.errors import (
    AuthenticationError,
    ForbiddenError,
    NotFoundError,
    QpherError,
    RateLimitError,
    ValidationError,
)

from schemas.algorithms import Plan
from tests.support.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.long]


@pytest.fixture
def sdk(stack: LocalStack, api_key: str) -> Qpher:
    if not stack.http_port:
        pytest.skip("the HTTP bridge is not part of this stack")
    return Qpher(api_key=api_key, base_url=stack.http_url, max_retries=0)


def test_sdk_key_lifecycle(sdk: Qpher) -> None:
    generated = sdk.keys.generate("Kyber768")
    assert (generated.key_version, generated.status) == (1, "active")
    assert len(generated.public_key) == 1206  # SPKI DER of an ML-KEM-768 key
    assert sdk.keys.get_active("Kyber768").key_version == 1
    rotated = sdk.keys.rotate("Kyber768")
    assert (rotated.key_version, rotated.old_key_version) == (2, 1)
    assert sdk.keys.get("Kyber768", 1).status == "retired"
    listed = sdk.keys.list(algorithm="Kyber768")
    assert listed.total == 2 and [k.key_version for k in listed.keys] == [1, 2]
    assert sdk.keys.list(status="active").total == 1
    retired = sdk.keys.retire("Kyber768", 1)
    assert retired.status == "retired" and retired.public_key == generated.public_key


def test_sdk_kem_operations(sdk: Qpher) -> None:
    sdk.keys.generate("Kyber768")
    encrypted = sdk.kem.encrypt(b"sensitive data", key_version=1)
    assert encrypted.algorithm == "Kyber768"
    assert sdk.kem.decrypt(encrypted.ciphertext, key_version=1).plaintext == b"sensitive data"
    salt = b"s" * 32
    one = sdk.kem.encrypt(b"dedup me", key_version=1, mode="deterministic", salt=salt)
    two = sdk.kem.encrypt(b"dedup me", key_version=1, mode="deterministic", salt=salt)
    assert one.ciphertext == two.ciphertext
    encapsulated = sdk.kem.encapsulate(key_version=1)
    decapsulated = sdk.kem.decapsulate(encapsulated.kem_ciphertext, key_version=1)
    assert decapsulated.shared_secret == encapsulated.shared_secret
    wrapped = sdk.kem.wrap(b"k" * 32, key_version=1)
    assert sdk.kem.unwrap(wrapped.wrapped_key, key_version=1).symmetric_key == b"k" * 32
    envelope = sdk.kem.encrypt_local(b"stays local", key_version=1)
    assert sdk.kem.decrypt_local(envelope) == b"stays local"


def test_sdk_signature_operations(sdk: Qpher) -> None:
    sdk.keys.generate("Dilithium3")
    signed = sdk.signatures.sign(b"Invoice #1234", key_version=1)
    assert sdk.signatures.verify(b"Invoice #1234", signed.signature, key_version=1).valid
    assert not sdk.signatures.verify(b"Invoice #9999", signed.signature, key_version=1).valid
    digest = hashlib.sha512(b"a large file").digest()
    hash_signed = sdk.signatures.sign_hash(digest, "SHA-512", key_version=1)
    assert hash_signed.signature_type == "detached"
    checked = sdk.signatures.verify_hash(digest, "SHA-512", hash_signed.signature, key_version=1)
    assert checked.valid and checked.hash_algorithm == "SHA-512"


def test_sdk_errors_carry_code_and_status(stack: LocalStack, sdk: Qpher) -> None:
    with pytest.raises(NotFoundError) as not_found:
        sdk.kem.encrypt(b"x", key_version=3)
    assert (not_found.value.error_code, not_found.value.status_code) == ("ERR_KEM_005", 404)
    with pytest.raises(NotFoundError) as kms_missing:
        sdk.keys.get_active("Dilithium3")
    assert kms_missing.value.error_code == "ERR_KMS_003"
    sdk.keys.generate("Kyber768")
    with pytest.raises(QpherError) as conflict:
        sdk.keys.generate("Kyber768")
    assert (conflict.value.error_code, conflict.value.status_code) == ("ERR_KMS_004", 409)
    with pytest.raises(QpherError) as retire_active:
        sdk.keys.retire("Kyber768", 1)
    assert (retire_active.value.error_code, retire_active.value.status_code) == (
        "ERR_KMS_005", 409)
    sdk.keys.rotate("Kyber768")
    with pytest.raises(ForbiddenError) as forbidden:
        sdk.kem.encrypt(b"x", key_version=1)
    assert forbidden.value.error_code == "ERR_FORBIDDEN_001"
    with pytest.raises(ValidationError) as invalid:
        sdk.kem.wrap(b"short", key_version=2)
    assert (invalid.value.error_code, invalid.value.status_code) == ("ERR_INVALID_001", 400)
    with pytest.raises(ValidationError):
        sdk.kem.decrypt(b"not a ciphertext", key_version=2)
    anonymous = Qpher(api_key="qph_not_a_real_key", base_url=stack.http_url, max_retries=0)
    with pytest.raises(AuthenticationError) as auth:
        anonymous.keys.list()
    assert (auth.value.error_code, auth.value.status_code) == ("ERR_AUTH_001", 401)


async def test_sdk_rate_limit_error(stack: LocalStack) -> None:
    if not stack.http_port:
        pytest.skip("the HTTP bridge is not part of this stack")
    free_key = await stack.create_tenant(Plan.FREE)

    def hammer() -> RateLimitError:
        client = Qpher(api_key=free_key, base_url=stack.http_url, max_retries=0)
        for _ in range(60):
            try:
                client.keys.list()
            except RateLimitError as exc:
                return exc
        raise AssertionError("no 429 within 60 requests on the free plan")

    import asyncio

    error = await asyncio.to_thread(hammer)
    assert (error.error_code, error.status_code) == ("ERR_RATE_001", 429)


def test_seed_curl_workflow_over_raw_http(stack: LocalStack, api_key: str) -> None:
    """The reference's "Full cURL Workflow", step by step, with its exact bodies."""
    if not stack.http_port:
        pytest.skip("the HTTP bridge is not part of this stack")
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    with httpx.Client(base_url=stack.http_url, headers=headers) as http:
        step1 = http.post("/api/v1/kms/keys/generate", content='{"algorithm": "Kyber768"}')
        assert step1.status_code == 201
        assert step1.json()["data"]["key_version"] == 1
        step2 = http.post("/api/v1/kem/encrypt", content="""{
"plaintext": "c2Vuc2l0aXZlIGRhdGEgdG8gcHJvdGVjdA==",
"key_version": 1
}""", headers={"X-Request-ID": "550e8400-e29b-41d4-a716-446655440000"})
        assert step2.status_code == 200
        assert step2.headers["X-Request-ID"] == "550e8400-e29b-41d4-a716-446655440000"
        assert step2.json()["request_id"] == "550e8400-e29b-41d4-a716-446655440000"
        ciphertext = step2.json()["data"]["ciphertext"]
        step3 = http.post("/api/v1/kem/decrypt",
                          json={"ciphertext": ciphertext, "key_version": 1})
        assert step3.status_code == 200
        assert base64.b64decode(step3.json()["data"]["plaintext"]) == b"sensitive data to protect"
        http.post("/api/v1/kms/keys/generate", json={"algorithm": "Dilithium3"})
        step4 = http.post("/api/v1/signature/sign",
                          json={"message": "SW52b2ljZSAjMTIzNA==", "key_version": 1})
        assert step4.status_code == 200
        step5 = http.post("/api/v1/signature/verify",
                          json={"message": "SW52b2ljZSAjMTIzNA==", "key_version": 1,
                                "signature": step4.json()["data"]["signature"]})
        assert step5.json()["data"]["valid"] is True
        # GET routes, both key-by-version forms, lower-case header
        by_path = http.get("/api/v1/kms/keys/Kyber768/1")
        by_query = httpx.get(f"{stack.http_url}/api/v1/kms/keys/1",
                             params={"algorithm": "Kyber768"}, headers={"x-api-key": api_key})
        assert by_path.json()["data"] == by_query.json()["data"]
        assert http.get("/api/v1/kms/keys/active", params={"algorithm": "Kyber768"}).json()[
            "data"]["key_version"] == 1
        missing_version = http.post("/api/v1/kem/encrypt", json={"plaintext": "dGVzdA=="})
        assert missing_version.status_code == 400
        assert missing_version.json()["error"]["message"] == (
            "Validation failed: key_version is required")
        unauthorised = httpx.post(f"{stack.http_url}/api/v1/kem/encrypt",
                                  headers={"X-API-Key": "invalid_key"},
                                  json={"plaintext": "dGVzdA==", "key_version": 1})
        assert unauthorised.status_code == 401
        assert unauthorised.json()["error"]["code"] == "ERR_AUTH_001"
        assert uuid.UUID(unauthorised.headers["X-Request-ID"])


@pytest.mark.parametrize(("method", "url", "message"), [
    ("GET", "/api/v1/kms/keys?colour=blue", "unknown query parameter 'colour'"),
    ("GET", "/api/v1/kms/keys/Kyber768/abc", "key_version must be an integer >= 1"),
    ("GET", "/api/v1/kms/keys/Kyber768/2147483648", "key_version must be an integer <= 2147483647"),
    ("POST", "/api/v1/kem/encrypt?x=1", "unknown query parameter 'x'"),
])
def test_invalid_parameters_are_answered_after_the_api_key(
    stack: LocalStack, api_key: str, method: str, url: str, message: str
) -> None:
    """Order of checks: API key, rate limit, then validation (docs/decisions.md), for the
    bridge's query and path parameters too: no key is a 401, a valid one the 400."""
    if not stack.http_port:
        pytest.skip("the HTTP bridge is not part of this stack")
    body = {"plaintext": "AA==", "key_version": 1}
    with httpx.Client(base_url=stack.http_url) as http:
        for headers in ({}, {"X-API-Key": "qph_" + "x" * 43}):
            refused = http.request(method, url, json=body, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "ERR_AUTH_001"
        invalid = http.request(method, url, json=body, headers={"X-API-Key": api_key})
    assert invalid.status_code == 400, invalid.text
    assert invalid.json()["error"] == {"code": "ERR_INVALID_001", "error_code": "ERR_INVALID_001",
                                       "message": f"Validation failed: {message}"}
