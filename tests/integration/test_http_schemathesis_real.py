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

from tests.support.schemathesis_calls import DOCUMENT, call_and_check, examples
from tests.support.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.long]

EXAMPLES = int(os.environ.get("PQKMS_SCHEMATHESIS_REAL_EXAMPLES", "30"))
ALGORITHMS = ("Kyber768", "X-Wing", "Dilithium3", "Composite-ML-DSA", "SLH-DSA-SHA2-128f")


@pytest.fixture
def keyed_tenant(stack: LocalStack, api_key: str) -> str:
    """A fresh tenant with version 1 of every algorithm; its API key."""
    for algorithm in ALGORITHMS:
        reply = httpx.post(f"{stack.http_url}/api/v1/kms/keys/generate",
                           json={"algorithm": algorithm}, headers={"X-API-Key": api_key},
                           timeout=30)
        assert reply.status_code == 201, reply.text
    return api_key


@DOCUMENT.parametrize()
@examples(EXAMPLES)
def test_real_replies_conform_to_the_document(
    case: schemathesis.Case,  # type: ignore[type-arg]
    stack: LocalStack,
    keyed_tenant: str,
) -> None:
    call_and_check(case, stack.http_url, keyed_tenant)
    assert all(worker.poll() is None for worker in stack.workers)
