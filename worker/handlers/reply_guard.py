"""Requests whose reply subject a worker must not publish to.

A request's reply subject is the sender's choice, and a worker publishes its reply there
with its own rights: JetStream's API, pqkms's streams (job results, the audit stream, key
events). On a server where callers share the workers' account (``pqkms up``), a caller
could otherwise have a worker write, say, forged job results of any tenant. Such a
request is dropped unanswered and unhandled, with a warning.
"""

from __future__ import annotations

import structlog

from schemas.subjects import reply_subject_allowed

__all__ = ["refuse_reserved_reply"]

_log = structlog.get_logger("pqkms.worker")


def refuse_reserved_reply(subject: str, reply: str | None) -> bool:
    """True (and a warning) for a request whose reply subject is one a worker never
    publishes to (``schemas.subjects.RESERVED_REPLY_PREFIXES``): it is not handled."""
    if not reply or reply_subject_allowed(reply):
        return False
    _log.warning("reply_subject_refused", subject=subject, reply=reply[:200])
    return True
