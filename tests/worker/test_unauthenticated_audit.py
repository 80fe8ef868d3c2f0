"""The budget of requests without a valid API key audited one by one
(worker/audit/unauthenticated.py)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from worker.audit import unauthenticated
from worker.audit.unauthenticated import UnauthenticatedAuditBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(unauthenticated.time, "monotonic", fake)
    return fake


def test_a_burst_then_the_rate_and_a_warning_a_second(clock: Clock) -> None:
    budget = UnauthenticatedAuditBudget(rate=2.0, burst=3)
    with capture_logs() as logs:
        assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
        clock.now += 0.5  # one token back
        assert [budget.take(), budget.take()] == [True, False]
        clock.now += 1.0  # two more, and a second since the last report
        assert [budget.take(), budget.take(), budget.take()] == [True, True, False]
    assert budget.skipped == 4
    warnings = [entry for entry in logs if entry["event"] == "audit_unauthenticated_skipped"]
    assert [(entry["requests"], entry["total"]) for entry in warnings] == [(4, 4)]


def test_no_budget_audits_none(clock: Clock) -> None:
    budget = UnauthenticatedAuditBudget(rate=0.0, burst=0)
    assert not any(budget.take() for _ in range(10))
    clock.now += 60
    assert not budget.take()
