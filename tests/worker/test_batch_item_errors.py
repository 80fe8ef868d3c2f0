"""A batch answered OK whose items failed says so: the envelope stays OK (HTTP 200, the
Qpher contract), but its request record, its ``request`` log line and
``pqkms_batch_item_errors_total`` count the failed items by error code."""

from __future__ import annotations

import secrets
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from schemas.algorithms import Algorithm, Plan
from schemas.errors import ErrorCode
from schemas.operations import operation_for
from schemas.subjects import HEADER_API_KEY, Subject
from tests.support.kem_batch import VersionOneKeys as _Keys
from tests.support.kem_batch import b64, batch_service
from worker.config import Settings
from worker.crypto import Mode, seal
from worker.errors import ServiceError
from worker.handlers.envelope import EnvelopeHandler, ServiceCall
from worker.metrics import WorkerMetrics
from worker.services.auth import Authenticator
from worker.services.batch import BatchService
from worker.services.context import Caller
from worker.services.rate_limit import InMemoryRateLimiter
from worker.services.request_record import RequestRecord
from worker.store import KeyStore, TenantRecord

CALLER = Caller(tenant_id="t-1", plan=Plan.ENTERPRISE, request_id="r-1")
DECRYPT_BATCH = Subject.KEM_DECRYPT_BATCH.value
ERRORS = "pqkms_batch_item_errors_total"
_API_KEY = "qph_" + "k" * 43


class _OneTenant:
    async def authenticate(self, api_key: str) -> TenantRecord | None:
        return TenantRecord("t-1", "acme", Plan.ENTERPRISE)


@dataclass
class _FailingTrail:
    """An audit sink whose writes fail: the request is answered 503."""

    async def append(self, record: RequestRecord) -> None:
        raise ConnectionError("JetStream down")

    def failing(self) -> bool:
        return False


@pytest.fixture
def keys() -> _Keys:
    return _Keys()


@pytest.fixture
def service(keys: _Keys) -> BatchService:
    return batch_service(keys)


def _ciphertext(keys: _Keys, plaintext: bytes) -> str:
    return b64(seal(keys.key, Algorithm.KYBER768, 1, Mode.STANDARD, plaintext))


def _mixed_items(keys: _Keys) -> list[Any]:
    """One good ciphertext, then three items that fail, with two different codes."""
    return [
        {"ciphertext": _ciphertext(keys, b"fine")},
        {"ciphertext": b64(secrets.token_bytes(1200)), "reference": "garbage"},
        {"ciphertext": _ciphertext(keys, b"other"), "key_version": 9},  # not found
        {"ciphertext": b64(secrets.token_bytes(1200))},
    ]


def _samples(metrics: WorkerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _item_errors(metrics: WorkerMetrics) -> dict[tuple[str, str], float]:
    """``(operation, code) → count`` of every ``pqkms_batch_item_errors_total`` series."""
    return {(labels["operation"], labels["code"]): count
            for (name, frozen), count in _samples(metrics).items() if name == ERRORS
            for labels in [dict(frozen)]}


async def _respond(tmp_path: Path, subject: Subject, call: ServiceCall, body: dict[str, Any],
                   metrics: WorkerMetrics, audit: Any = None
                   ) -> tuple[dict[str, Any], list[MutableMapping[str, Any]]]:
    """One request through the envelope handler: its reply and its ``request`` lines."""
    extra = {} if audit is None else {"audit": audit}
    handler = EnvelopeHandler(Authenticator(cast(KeyStore, _OneTenant())),
                              InMemoryRateLimiter(), Settings(data_dir=tmp_path, audit=False),
                              metrics=metrics, **extra)
    with capture_logs() as logs:
        (reply, _), finish = await handler.respond(operation_for(subject), call,
                                                   orjson.dumps(body), {HEADER_API_KEY: _API_KEY})
        finish()
    return orjson.loads(reply), [event for event in logs if event["event"] == "request"]


async def test_the_outcome_names_the_code_of_each_failed_item(
    service: BatchService, keys: _Keys
) -> None:
    outcome = await service.run(Subject.KEM_DECRYPT, CALLER, _mixed_items(keys), key_version=1)

    codes = [result["error"]["code"] for result in outcome.results if "error" in result]
    assert outcome.failed == 3
    assert list(outcome.error_codes) == codes
    assert codes[1] == ErrorCode.KEM_KEY_NOT_FOUND.value
    assert codes[0] == codes[2] != codes[1]  # both undecryptable: one code


@pytest.mark.parametrize("single", [Subject.KEM_ENCRYPT, Subject.KEM_DECRYPT,
                                    Subject.SIGNATURE_SIGN, Subject.SIGNATURE_VERIFY])
async def test_every_batch_kind_collects_its_failed_items_codes(
    service: BatchService, single: Subject
) -> None:
    # Items that are not objects fail before any key is needed, in every kind.
    outcome = await service.run(single, CALLER, [1, "two"], key_version=1)

    assert (outcome.failed, list(outcome.error_codes)) == (2, [ErrorCode.INVALID.value] * 2)


async def test_a_batch_with_failed_items_is_ok_and_counts_them(
    tmp_path: Path, service: BatchService, keys: _Keys
) -> None:
    metrics = WorkerMetrics()
    envelope, lines = await _respond(tmp_path, Subject.KEM_DECRYPT_BATCH, service.decrypt,
                                     {"key_version": 1, "items": _mixed_items(keys)}, metrics)

    data = envelope["data"]  # the reply itself is unchanged: OK, per-item results
    assert (data["total"], data["succeeded"], data["failed"]) == (4, 1, 3)
    codes = [result["error"]["code"] for result in data["results"] if "error" in result]
    [line] = lines
    assert (line["outcome"], line["items_failed"]) == ("OK", 3)
    assert _item_errors(metrics) == {(DECRYPT_BATCH, codes[0]): 2,
                                     (DECRYPT_BATCH, ErrorCode.KEM_KEY_NOT_FOUND.value): 1}
    found = _samples(metrics)
    assert found[("pqkms_requests_total",
                  frozenset({("operation", DECRYPT_BATCH), ("outcome", "OK")}))] == 1


async def test_a_batch_without_failures_logs_zero_and_single_requests_no_field(
    tmp_path: Path, service: BatchService, keys: _Keys
) -> None:
    metrics = WorkerMetrics()
    items = [{"ciphertext": _ciphertext(keys, b"a")}, {"ciphertext": _ciphertext(keys, b"b")}]
    envelope, [line] = await _respond(tmp_path, Subject.KEM_DECRYPT_BATCH, service.decrypt,
                                      {"key_version": 1, "items": items}, metrics)
    assert envelope["data"]["failed"] == 0
    assert (line["outcome"], line["items_failed"]) == ("OK", 0)

    async def fails(caller: Caller, request: Any) -> Any:
        raise ServiceError(ErrorCode.KEM_KEY_NOT_FOUND, "no such key")

    _, [single] = await _respond(tmp_path, Subject.KEM_DECRYPT, fails,
                                 {"ciphertext": b64(b"x"), "key_version": 1}, metrics)
    assert single["outcome"] == ErrorCode.KEM_KEY_NOT_FOUND.value
    assert "items_failed" not in single
    assert _item_errors(metrics) == {}


async def test_a_batch_answered_503_counts_no_item_failures(
    tmp_path: Path, service: BatchService, keys: _Keys
) -> None:
    # Its audit record could not be written: the client gets 503 and no item results.
    metrics = WorkerMetrics()
    envelope, [line] = await _respond(tmp_path, Subject.KEM_DECRYPT_BATCH, service.decrypt,
                                      {"key_version": 1, "items": _mixed_items(keys)}, metrics,
                                      audit=_FailingTrail())
    assert envelope["error"]["code"] == ErrorCode.SERVICE_UNAVAILABLE.value
    assert (line["outcome"], line["items_failed"]) == (ErrorCode.SERVICE_UNAVAILABLE.value, 0)
    assert _item_errors(metrics) == {}


def test_metrics_count_item_errors_by_operation_and_code() -> None:
    metrics = WorkerMetrics()
    sign_batch = Subject.SIGNATURE_SIGN_BATCH.value

    def record(operation: str, item_errors: list[str]) -> RequestRecord:
        return RequestRecord(operation=operation, request_id="r", tenant_id="t",
                             algorithm=None, key_version=1, outcome="OK",
                             duration_seconds=0.001, items=5, item_errors=item_errors)

    metrics.observe(record(DECRYPT_BATCH, ["ERR_INVALID_001", "ERR_KEM_005",
                                           "ERR_INVALID_001"]))
    metrics.observe(record(DECRYPT_BATCH, ["ERR_INVALID_001"]))
    metrics.observe(record(sign_batch, ["ERR_NOT_FOUND_001"]))
    metrics.observe(record(sign_batch, []))

    assert _item_errors(metrics) == {
        (DECRYPT_BATCH, "ERR_INVALID_001"): 3, (DECRYPT_BATCH, "ERR_KEM_005"): 1,
        (sign_batch, "ERR_NOT_FOUND_001"): 1,
    }
    assert record(DECRYPT_BATCH, ["ERR_KEM_005"] * 2).items_failed == 2
