"""A request that would change stored state is refused before it acts while the audit
trail is known to be failing: a 503 must never hide a change that was made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from schemas.algorithms import Plan
from schemas.operations import operation_for
from schemas.subjects import HEADER_API_KEY, Subject
from worker.config import Settings
from worker.handlers.envelope import EnvelopeHandler
from worker.services.auth import Authenticator
from worker.services.rate_limit import InMemoryRateLimiter
from worker.services.request_record import RequestRecord
from worker.store import KeyStore, TenantRecord

_KEY = "qph_" + "k" * 43


class _OneTenant:
    async def authenticate(self, api_key: str) -> TenantRecord | None:
        return TenantRecord("t-1", "acme", Plan.ENTERPRISE)


@dataclass
class _Trail:
    """An audit sink whose last write failed; records appended now are written."""

    is_failing: bool
    still_failing: bool = False  # appends fail too
    records: list[RequestRecord] = field(default_factory=list)

    async def append(self, record: RequestRecord) -> None:
        if self.still_failing:
            raise ConnectionError("JetStream down")
        self.records.append(record)

    def failing(self) -> bool:
        return self.is_failing


@dataclass
class _Service:
    calls: int = 0

    async def __call__(self, caller: Any, request: Any) -> Any:
        self.calls += 1
        raise AssertionError("the stub stops here")  # reached: the request was not refused


async def _respond(tmp_path: Path, subject: Subject, body: dict[str, Any],
                   trail: _Trail) -> tuple[dict[str, Any], _Service]:
    handler = EnvelopeHandler(Authenticator(cast(KeyStore, _OneTenant())),
                              InMemoryRateLimiter(), Settings(data_dir=tmp_path, audit=False),
                              audit=trail)
    service = _Service()
    (reply, _), finish = await handler.respond(operation_for(subject), service,
                                               orjson.dumps(body), {HEADER_API_KEY: _KEY})
    finish()
    envelope: dict[str, Any] = orjson.loads(reply)
    return envelope, service


@pytest.mark.parametrize(("subject", "body"), [
    (Subject.KEYS_GENERATE, {"algorithm": "Kyber768"}),
    (Subject.KEYS_ROTATE, {"algorithm": "Kyber768"}),
    (Subject.KEYS_RETIRE, {"algorithm": "Kyber768", "version": 1}),
    (Subject.KEYS_ARCHIVE, {"algorithm": "Kyber768", "version": 1}),
    (Subject.KEYS_ROTATION_POLICY_SET, {"algorithm": "Kyber768", "period_days": 30}),
])
async def test_a_change_is_refused_while_the_trail_fails(
    tmp_path: Path, subject: Subject, body: dict[str, Any]
) -> None:
    trail = _Trail(is_failing=True)
    envelope, service = await _respond(tmp_path, subject, body, trail)
    assert service.calls == 0
    assert envelope["error"]["code"] == "ERR_SERVICE_001"
    assert "was not made" in envelope["error"]["message"]
    # The refusal itself is audited (its record may be the one that gets through).
    assert [record.outcome for record in trail.records] == ["ERR_SERVICE_001"]


async def test_the_refusal_says_nothing_changed_even_when_its_own_record_fails(
    tmp_path: Path,
) -> None:
    trail = _Trail(is_failing=True, still_failing=True)
    envelope, service = await _respond(tmp_path, Subject.KEYS_GENERATE,
                                       {"algorithm": "Kyber768"}, trail)
    assert service.calls == 0
    assert envelope["error"]["code"] == "ERR_SERVICE_001"
    assert "was not made" in envelope["error"]["message"]


async def test_reads_and_crypto_still_try_while_the_trail_fails(tmp_path: Path) -> None:
    # They change nothing: if their record cannot be written they fail after the fact.
    for subject, body in [(Subject.KEYS_LIST, {}),
                          (Subject.KEM_ENCRYPT, {"plaintext": "aGk=", "key_version": 1})]:
        envelope, service = await _respond(tmp_path, subject, body, _Trail(is_failing=True))
        assert service.calls == 1
        assert envelope["error"]["code"] == "ERR_INTERNAL_001"  # the stub's AssertionError


async def test_a_change_goes_ahead_while_the_trail_writes(tmp_path: Path) -> None:
    _, service = await _respond(tmp_path, Subject.KEYS_GENERATE, {"algorithm": "Kyber768"},
                                _Trail(is_failing=False))
    assert service.calls == 1
