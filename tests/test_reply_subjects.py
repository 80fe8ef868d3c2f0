"""Reply subjects a worker answers on, and those it refuses (schemas/subjects.py,
worker/handlers/reply_guard.py)."""

from __future__ import annotations

import pytest

from schemas.subjects import reply_subject_allowed


@pytest.mark.parametrize(("reply", "allowed"), [
    ("_INBOX.abc.1", True), ("_R_.abc.def", True), ("_PQKMS_BRIDGE_INBOX.x.1", True),
    ("my-app.replies.7", True), ("$JS.API.STREAM.DELETE.PQKMS_AUDIT", False),
    ("$KV.pqkms_jobs.x", False), ("pqkms.v1.jobs.results.t.j.0", False),
    ("_PQKMS_WORKER_INBOX.abc", False), ("_INBOX.victim.*", False), ("_INBOX.>", False),
])
def test_reply_subjects_a_worker_answers(reply: str, allowed: bool) -> None:
    assert reply_subject_allowed(reply) is allowed
