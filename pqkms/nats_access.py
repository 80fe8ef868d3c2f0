"""Who may do what on the embedded nats-server of ``pqkms up``.

Three users, with passwords made afresh at every start, and the rights each role needs:

- ``pqkms-worker`` (the workers): the operation subjects, only in the workers' queue
  group; the job, audit and key-event streams, JetStream and its buckets; replies to the
  requests it receives (``allow_responses``).
- ``pqkms-bridge`` (the HTTP bridge): a caller like any other.
- ``pqkms-app``: every connection that brings no credentials (``no_auth_user``). It may
  send requests to the operation subjects and read replies on ``_INBOX.>``, nothing
  else: it can neither read the workers' requests (API keys, plaintexts) nor answer
  them, nor touch JetStream (job results, the audit stream) or publish into its streams.

The workers and the bridge take their replies on inbox prefixes of their own
(``PQKMS_NATS_INBOX_PREFIX``), which callers may not subscribe to: the bridge's replies
(HTTP callers' plaintexts) and the workers' JetStream replies (stored job results) stay
out of reach of ``_INBOX.>``. Callers without credentials share ``_INBOX.>`` and so trust
each other. Since callers share the workers' account, a caller could name a worker's
stream as a request's reply subject: workers answer no such request
(``worker/handlers/reply_guard.py``).

``deploy/nats/accounts.conf`` makes the same split with accounts, for deployments where
each application gets an identity of its own; one account here spares every request a
crossing between accounts in nats-server (measured in docs/decisions.md, "NATS
security"). ``tests/test_nats_access.py`` checks that both grant the same subjects.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.subjects import WORKER_INBOX_PREFIX

__all__ = [
    "ANONYMOUS_USER",
    "BRIDGE_INBOX_PREFIX",
    "BRIDGE_USER",
    "OPERATION_SUBJECTS",
    "WORKER_INBOX_PREFIX",
    "WORKER_PUBLISH",
    "WORKER_USER",
    "StackCredentials",
    "access_config",
    "write_private",
]

WORKER_USER = "pqkms-worker"
BRIDGE_USER = "pqkms-bridge"
# The user a connection without credentials is bound to; its password is given to no one.
ANONYMOUS_USER = "pqkms-app"
QUEUE_GROUP = "pqkms-workers"
# Reply subjects of the workers and of the bridge: not under ``_INBOX``, so not under
# what callers may subscribe to.
BRIDGE_INBOX_PREFIX = "_PQKMS_BRIDGE_INBOX"
CALLER_INBOXES = "_INBOX.>"

# Requests a caller may send.
OPERATION_SUBJECTS = (
    "pqkms.v1.kem.>",
    "pqkms.v1.signature.>",
    "pqkms.v1.kms.>",
    "pqkms.v1.jobs.submit",
    "pqkms.v1.jobs.status",
    "pqkms.v1.jobs.results",
    "pqkms.v1.jobs.delete",
    "pqkms.v1.health.ping",
)

# The workers' own JetStream and streams.
WORKER_PUBLISH = (
    "$JS.API.>",
    "$JS.ACK.>",
    "$KV.pqkms_rate_limits.>",
    "$KV.pqkms_jobs.>",
    "pqkms.v1.jobs.chunks.>",
    "pqkms.v1.jobs.results.>",
    "pqkms.v1.events.>",
    "pqkms.v1.audit.>",
    "pqkms.v1.health.ping",
)

# Where the workers' password is kept for operator tools that need their rights (the
# audit stream, the key-event stream); see docs/deploy.md.
WORKER_PASSWORD_FILE = "worker.password"  # noqa: S105 - a file name
_PASSWORD_BYTES = 32


@dataclass(frozen=True, slots=True)
class StackCredentials:
    """The passwords of one ``pqkms up`` run (never in a repr or a log line)."""

    worker_password: str = field(repr=False)
    bridge_password: str = field(repr=False)
    anonymous_password: str = field(repr=False)

    @classmethod
    def generate(cls) -> StackCredentials:
        """Fresh random passwords."""
        return cls(*(secrets.token_urlsafe(_PASSWORD_BYTES) for _ in range(3)))

    def worker_env(self) -> dict[str, str]:
        """What a worker child needs to log in and take its replies."""
        return {"PQKMS_NATS_USER": WORKER_USER, "PQKMS_NATS_PASSWORD": self.worker_password,
                "PQKMS_NATS_INBOX_PREFIX": WORKER_INBOX_PREFIX}

    def bridge_env(self) -> dict[str, str]:
        """What the bridge child needs to log in and take its replies."""
        return {"PQKMS_NATS_USER": BRIDGE_USER, "PQKMS_NATS_PASSWORD": self.bridge_password,
                "PQKMS_NATS_INBOX_PREFIX": BRIDGE_INBOX_PREFIX}

    def save_worker_password(self, nats_dir: Path) -> Path:
        """Write the workers' password to ``nats_dir``, readable by this user only."""
        path = nats_dir / WORKER_PASSWORD_FILE
        write_private(path, self.worker_password + "\n")
        return path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600 from its creation on."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _caller(user: str, password: str, inboxes: str) -> dict[str, Any]:
    return {
        "user": user,
        "password": password,
        "permissions": {
            "publish": {"allow": list(OPERATION_SUBJECTS)},
            # Never the operation subjects: a caller must neither read other callers'
            # requests nor answer them as if it were a worker.
            "subscribe": {"allow": [inboxes], "deny": list(OPERATION_SUBJECTS)},
        },
    }


def access_config(credentials: StackCredentials) -> dict[str, Any]:
    """The ``no_auth_user`` and ``authorization`` entries of the server's configuration
    (nats-server reads JSON as configuration)."""
    return {
        "no_auth_user": ANONYMOUS_USER,
        "authorization": {"users": [
            {
                "user": WORKER_USER,
                "password": credentials.worker_password,
                "permissions": {
                    "publish": {"allow": list(WORKER_PUBLISH)},
                    # Requests only in the queue group: a worker's password takes a share
                    # of them, never a copy of all of them.
                    "subscribe": {"allow": [f"pqkms.v1.> {QUEUE_GROUP}",
                                            f"{WORKER_INBOX_PREFIX}.>"]},
                    # Replies go to each requester's reply subject, once per request.
                    "allow_responses": True,
                },
            },
            _caller(BRIDGE_USER, credentials.bridge_password, f"{BRIDGE_INBOX_PREFIX}.>"),
            _caller(ANONYMOUS_USER, credentials.anonymous_password, CALLER_INBOXES),
        ]},
    }
