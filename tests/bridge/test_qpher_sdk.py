"""The official qpher SDK (1.4.0) against the bridge and the fake worker.

The SDK is synchronous; the bridge and the fake worker run in their own threads.
"""

from __future__ import annotations

import pytest
import qpher
import qpher.errors
from qpher import Qpher

from schemas import ErrorCode

from .fake_worker import FakeWorker
from .live import LiveBridge


@pytest.fixture
def sdk(bridge: LiveBridge) -> Qpher:
    return Qpher(api_key="qph_test", base_url=bridge.url, max_retries=0, timeout=10)


def test_every_sdk_method_round_trips(sdk: Qpher, realistic_worker: FakeWorker) -> None:
    assert sdk.kem.encrypt(plaintext=b"hello", key_version=1).key_version == 1
    assert sdk.kem.decrypt(ciphertext=b"ct", key_version=1).plaintext == b"hello"
    assert sdk.kem.encapsulate(key_version=2).key_version == 2
    assert sdk.kem.decapsulate(kem_ciphertext=b"kc", key_version=2).shared_secret == b"s" * 32
    assert sdk.kem.wrap(symmetric_key=b"k" * 32, key_version=1).wrapping_method == "HPKE"
    assert sdk.kem.unwrap(wrapped_key=b"wk", key_version=1).symmetric_key == b"k" * 32
    assert sdk.signatures.sign(message=b"m", key_version=1).signature == b"sig"
    assert sdk.signatures.verify(message=b"m", signature=b"sig", key_version=1).valid is True
    signed = sdk.signatures.sign_hash(hash_value=b"h" * 32, hash_algorithm="SHA-256", key_version=1)
    assert signed.hash_algorithm == "SHA-256"
    verified = sdk.signatures.verify_hash(hash_value=b"h" * 48, hash_algorithm="SHA-384",
                                          signature=b"sig", key_version=1)
    assert verified.valid is True
    assert sdk.keys.generate("Kyber768").status == "active"
    assert sdk.keys.list(algorithm="Dilithium3", status="retired").total == 1
    assert sdk.keys.get_active("X-Wing").algorithm == "X-Wing"
    assert sdk.keys.get("Kyber768", 4).key_version == 4
    assert sdk.keys.rotate("Dilithium3").old_key_version == 1
    assert sdk.keys.retire("Kyber768", 1).status == "retired"
    subjects = [r.subject for r in realistic_worker.received]
    assert "pqkms.v1.kms.keys.get" in subjects  # SDK uses /kms/keys/{version}?algorithm=
    assert all(r.headers["X-API-Key"] == "qph_test" for r in realistic_worker.received)


def test_worker_validation_error_reaches_the_sdk(sdk: Qpher, realistic_worker: FakeWorker) -> None:
    with pytest.raises(qpher.errors.ValidationError) as caught:
        sdk.kem.encrypt(plaintext=b"hello")  # no key_version
    assert caught.value.error_code == "ERR_INVALID_001"
    assert caught.value.status_code == 400
    assert caught.value.message == "Validation failed: key_version is required"
    assert caught.value.request_id


@pytest.mark.parametrize(("code", "error_class"), [
    (ErrorCode.INVALID, qpher.errors.ValidationError),
    (ErrorCode.AUTH, qpher.errors.AuthenticationError),
    (ErrorCode.FORBIDDEN, qpher.errors.ForbiddenError),
    (ErrorCode.KEM_KEY_NOT_FOUND, qpher.errors.NotFoundError),
    (ErrorCode.KMS_KEY_NOT_FOUND, qpher.errors.NotFoundError),
    (ErrorCode.KMS_ACTIVE_KEY_EXISTS, qpher.errors.QpherError),
    (ErrorCode.KMS_CANNOT_RETIRE_ACTIVE, qpher.errors.QpherError),
    (ErrorCode.RATE_LIMITED, qpher.errors.RateLimitError),
    (ErrorCode.CRYPTO, qpher.errors.ServerError),
    (ErrorCode.SERVICE_UNAVAILABLE, qpher.errors.ServerError),
    (ErrorCode.TIMEOUT, qpher.errors.ServerError),
], ids=lambda v: v.value if isinstance(v, ErrorCode) else v.__name__)
def test_sdk_exceptions_carry_code_and_status(
    sdk: Qpher, realistic_worker: FakeWorker, code: ErrorCode, error_class: type[Exception]
) -> None:
    realistic_worker.error_code = code.value
    realistic_worker.retry_after = 3 if code is ErrorCode.RATE_LIMITED else None
    with pytest.raises(error_class) as caught:
        sdk.keys.generate("Kyber768")
    error = caught.value
    assert isinstance(error, qpher.errors.QpherError)
    assert error.error_code == code.value
    assert error.status_code == code.http_status


def test_sdk_sees_503_without_a_worker(sdk: Qpher) -> None:
    with pytest.raises(qpher.errors.ServerError) as caught:
        sdk.signatures.sign(message=b"m", key_version=1)
    assert (caught.value.error_code, caught.value.status_code) == ("ERR_SERVICE_001", 503)


def test_sdk_sees_504_from_a_slow_worker(sdk: Qpher, realistic_worker: FakeWorker) -> None:
    realistic_worker.delay_seconds = 1.5
    with pytest.raises(qpher.errors.ServerError) as caught:
        sdk.signatures.sign(message=b"m", key_version=1)
    assert (caught.value.error_code, caught.value.status_code) == ("ERR_TIMEOUT_001", 504)


def test_sdk_sees_400_for_a_bad_version_in_the_path(
    sdk: Qpher, realistic_worker: FakeWorker
) -> None:
    with pytest.raises(qpher.errors.ValidationError) as caught:
        sdk.keys.get("Kyber768", "one")
    assert caught.value.error_code == "ERR_INVALID_001"
    assert caught.value.message == "Validation failed: key_version must be an integer >= 1"
