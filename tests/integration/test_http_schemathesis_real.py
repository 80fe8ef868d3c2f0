"""schemathesis against the real stack: the bridge and the real workers behind it.

`tests/bridge/test_schemathesis.py` checks the bridge against its document with a
scripted worker; here the real workers answer, so every reply the service really
gives — results, key records, batch results, job status, errors from the store and the
crypto — is checked against the document too. The tenant holds version 1 of each
algorithm, so generated requests that name version 1 reach the crypto.
PQKMS_SCHEMATHESIS_REAL_EXAMPLES sets the number of cases per operation.
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api_bridge.app import create_app
from tests.support.stack import LocalStack
from worker.config import Settings

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("PQKMS_SCHEMATHESIS_REAL_EXAMPLES", "30"))
ALGORITHMS = ("Kyber768", "X-Wing", "Dilithium3", "Composite-ML-DSA", "SLH-DSA-SHA2-128f")

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.fixture
def keyed_tenant(stack: LocalStack, api_key: str) -> str:
    """A fresh tenant with version 1 of every algorithm; its API key."""
    for algorithm in ALGORITHMS:
        reply = httpx.post(f"{stack.http_url}/api/v1/kms/keys/generate",
                           json={"algorithm": algorithm}, headers={"X-API-Key": api_key},
                           timeout=30)
        assert reply.status_code == 201, reply.text
    return api_key


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck), derandomize=True)
def test_real_replies_conform_to_the_document(
    case: schemathesis.Case,  # type: ignore[type-arg]
    stack: LocalStack,
    keyed_tenant: str,
) -> None:
    generated = {name.lower() for name in (case.headers or {})}
    headers = {"X-API-Key": keyed_tenant} if "x-api-key" in generated else {}
    response = case.call_and_validate(
        base_url=stack.http_url,
        headers=headers,
        # Cross-field rules JSON Schema does not carry: a schema-valid body may rightly
        # get its documented 400 (as in tests/bridge/test_schemathesis.py).
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
    assert response.status_code < 500, (case.method, case.path, response.status_code,
                                        response.text)
    assert all(worker.poll() is None for worker in stack.workers)
