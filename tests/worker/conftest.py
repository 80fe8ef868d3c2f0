"""Fixtures of the worker's in-memory handler tests."""

from __future__ import annotations

import pytest

from worker.handlers import reply_guard, routing


@pytest.fixture(autouse=True)
def requests_of_the_test_broker_are_answerable(monkeypatch: pytest.MonkeyPatch) -> None:
    """FastStream's ``TestNatsBroker`` hands a request to its handler without a reply
    subject (its answer goes back by return value), where a real request without one is
    dropped unhandled (``worker.handlers.reply_guard``): here only reserved reply
    subjects are refused. The dropping itself is tested against a real server
    (``tests/integration/test_request_floods.py``)."""

    def refuse_reserved_only(subject: str, reply: str | None) -> bool:
        return bool(reply) and reply_guard.refuse_unanswerable(subject, reply)

    monkeypatch.setattr(routing, "refuse_unanswerable", refuse_reserved_only)
