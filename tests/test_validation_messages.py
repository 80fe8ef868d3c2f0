"""Validation messages name the rule that was broken (schemas/validation.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.jobs import JobResultsRequest, JobSubmitRequest
from schemas.kem import EncryptRequest
from schemas.validation import describe_validation_error
from worker.errors import RateLimited, ServiceError
from worker.services.kem import check_message_size

_CHUNK: dict[str, Any] = {"job_id": "a", "operation": "kem.encrypt", "chunk_index": 0,
                          "total_chunks": 1, "items": [{"plaintext": "YQ=="}],
                          "key_version": 1}


def _message(model: type[BaseModel], body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return describe_validation_error(caught.value)


@pytest.mark.parametrize(("model", "body", "expected"), [
    (EncryptRequest, {"plaintext": "YQ==", "key_version": "1"}, "key_version must be an integer"),
    (EncryptRequest, {"plaintext": "YQ==", "key_version": 0},
     "key_version must be an integer >= 1"),
    (EncryptRequest, {"plaintext": "YQ==", "key_version": 2**31},
     "key_version must be an integer <= 2147483647"),
    # Chunks count from 0.
    (JobSubmitRequest, {**_CHUNK, "chunk_index": -1}, "chunk_index must be an integer >= 0"),
    (JobResultsRequest, {"job_id": "a", "chunk_index": -1}, "chunk_index must be an integer >= 0"),
    (JobSubmitRequest, {**_CHUNK, "chunk_index": 1_000_000},
     "chunk_index must be an integer < 1000000"),
    (JobSubmitRequest, {**_CHUNK, "total_chunks": 1_000_001},
     "total_chunks must be an integer <= 1000000"),
    (JobSubmitRequest, {**_CHUNK, "job_id": "bad id"}, "job_id must match ^[A-Za-z0-9_-]{1,64}$"),
])
def test_the_message_names_the_broken_rule(
    model: type[BaseModel], body: dict[str, Any], expected: str
) -> None:
    assert _message(model, body) == f"Validation failed: {expected}"


@pytest.mark.parametrize(("field", "advice"), [
    ("plaintext", "use kem/key/wrap with a data key"),
    ("message", "with signature/sign-hash and signature/verify-hash"),
])
def test_a_payload_over_the_limit_is_told_what_to_use_instead(field: str, advice: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_message_size(field, b"x" * 11, 10)
    assert caught.value.message.startswith(
        f"Validation failed: {field} is 11 bytes, over the 10-byte limit; ")
    assert advice in caught.value.message


@pytest.mark.parametrize(("retry_after", "message"), [
    (1, "Rate limit exceeded. Retry after 1 second."),
    (2, "Rate limit exceeded. Retry after 2 seconds."),  # as the reference's example
])
def test_the_rate_limit_message_counts_its_seconds(retry_after: int, message: str) -> None:
    assert RateLimited(retry_after).message == message
