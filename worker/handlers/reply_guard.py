"""Requests a worker does not handle, because their answer could not or must not go out.

- **No reply subject**: nobody could read the answer. Such requests are dropped before
  any work (no API key lookup, no crypto, no audit record): a review's 30-second flood
  of them, with random API keys, kept a worker busy for 15 minutes after it ended, one
  database lookup each, while real requests of that subject timed out.
- **A reserved reply subject**: a request's reply subject is the sender's choice, and a
  worker publishes its reply there with its own rights: JetStream's API, pqkms's streams
  (job results, the audit stream, key events). On a server where callers share the
  workers' account (``pqkms up``), a caller could otherwise have a worker write, say,
  forged job results of any tenant.

Either is dropped unanswered and unhandled, and counted in a warning of at most one line
a second (``request_without_reply_dropped``, ``reply_subject_refused``).
"""

from __future__ import annotations

from schemas.subjects import reply_subject_allowed
from worker.log_throttle import ThrottledWarning

__all__ = ["refuse_unanswerable"]

_NO_REPLY = ThrottledWarning("pqkms.worker", "request_without_reply_dropped")
_RESERVED = ThrottledWarning("pqkms.worker", "reply_subject_refused")


def refuse_unanswerable(subject: str, reply: str | None) -> bool:
    """True (counted in a warning) for a request not to handle: no reply subject, or one
    a worker never publishes to (``schemas.subjects.RESERVED_REPLY_PREFIXES``)."""
    if not reply:
        _NO_REPLY.note(subject=subject)
        return True
    if reply_subject_allowed(reply):
        return False
    _RESERVED.note(subject=subject, reply=reply[:200])
    return True
