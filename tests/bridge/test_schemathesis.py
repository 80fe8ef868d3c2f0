"""schemathesis against the live bridge's /openapi.json, with the fake worker answering.

Every generated request must get a documented status (never a 5xx) with a body,
headers and content type that match the document. The fake worker validates bodies
with the real request models, as the worker does, so generated requests see 200s and
400s alike. PQKMS_SCHEMATHESIS_EXAMPLES sets the number of cases per operation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis

from pqkms.nats_embedded import EmbeddedNats
from tests.support.schemathesis_calls import DOCUMENT, call_and_check, examples

from .conftest import API_KEY
from .fake_worker import FakeWorker
from .live import LiveBridge

pytestmark = pytest.mark.long

EXAMPLES = int(os.environ.get("PQKMS_SCHEMATHESIS_EXAMPLES", "100"))


# Parametrized, though with one mode, so that every case's node id names its operation:
# schemathesis gives a test of no other parameter one id for all its cases, which
# pytest-xdist cannot hand out.
@pytest.fixture(scope="module", params=["realistic"])
def answering_worker(request: pytest.FixtureRequest,
                     nats_server: EmbeddedNats) -> Iterator[FakeWorker]:
    fake = FakeWorker(nats_server.url, mode=request.param).start()
    yield fake
    fake.stop()


@DOCUMENT.parametrize()
@examples(EXAMPLES)
def test_api_conforms_to_its_document(
    case: schemathesis.Case,  # type: ignore[type-arg]
    bridge: LiveBridge,
    answering_worker: FakeWorker,
) -> None:
    call_and_check(case, bridge.url, API_KEY)


def test_generated_requests_reached_the_workers(answering_worker: FakeWorker) -> None:
    """The cases above were not all stopped at the bridge: every subject saw traffic."""
    from schemas import OPERATIONS

    counts = {op.subject.value: len(answering_worker.requests_on(op.subject.value))
              for op in OPERATIONS}
    print(counts)
    assert all(count >= EXAMPLES // 10 for count in counts.values()), counts
