"""Who may do what on the embedded nats-server of ``pqkms up``.

The same split as ``deploy/nats/accounts.conf`` (docs/deploy.md, "NATS security"), with
passwords made afresh at every start instead of nkeys:

- ``PQKMS``: the workers, logged in as ``pqkms-worker``. The operation subjects, the job,
  audit and key-event streams and JetStream live here.
- ``BRIDGE``: the HTTP bridge, logged in as ``pqkms-bridge``; a caller like any other.
- ``APP``: every connection that brings no credentials (``no_auth_user``). It may send
  requests to the operation subjects and read its own replies, nothing else: it can
  neither read the workers' traffic (API keys, plaintexts) nor the bridge's replies, nor
  touch JetStream, nor answer requests in place of a worker.

``tests/test_nats_accounts.py`` checks that the subject lists below are the ones of
``deploy/nats/accounts.conf``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ANONYMOUS_USER",
    "BRIDGE_USER",
    "OPERATION_SUBJECTS",
    "WORKER_PUBLISH",
    "WORKER_USER",
    "StackCredentials",
    "accounts_config",
]

WORKER_USER = "pqkms-worker"
BRIDGE_USER = "pqkms-bridge"
# The user a connection without credentials is bound to; its password is given to no one.
ANONYMOUS_USER = "pqkms-app"
QUEUE_GROUP = "pqkms-workers"

# Requests a caller may send: the subjects the PQKMS account exports as services.
OPERATION_SUBJECTS = (
    "pqkms.v1.kem.>",
    "pqkms.v1.signature.>",
    "pqkms.v1.kms.>",
    "pqkms.v1.jobs.submit",
    "pqkms.v1.jobs.status",
    "pqkms.v1.jobs.results",
    "pqkms.v1.health.ping",
)

# The workers' own JetStream and streams, in the PQKMS account only.
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

# (Only in the queue group: a worker's password takes a share of the requests, never a
# copy of all of them.)
WORKER_SUBSCRIBE = (f"pqkms.v1.> {QUEUE_GROUP}", "_INBOX.>")

# Where the password is kept for operator tools that need the workers' account (the
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
        """What a worker child needs to log in."""
        return {"PQKMS_NATS_USER": WORKER_USER, "PQKMS_NATS_PASSWORD": self.worker_password}

    def bridge_env(self) -> dict[str, str]:
        """What the bridge child needs to log in."""
        return {"PQKMS_NATS_USER": BRIDGE_USER, "PQKMS_NATS_PASSWORD": self.bridge_password}

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


def _caller_permissions() -> dict[str, Any]:
    return {
        "publish": {"allow": list(OPERATION_SUBJECTS)},
        # Never the operation subjects: a caller must neither read its own account's
        # requests nor answer them as if it were a worker.
        "subscribe": {"allow": ["_INBOX.>"], "deny": list(OPERATION_SUBJECTS)},
    }


def _service_imports() -> list[dict[str, Any]]:
    return [{"service": {"account": "PQKMS", "subject": subject}}
            for subject in OPERATION_SUBJECTS]


def accounts_config(credentials: StackCredentials) -> dict[str, Any]:
    """The ``no_auth_user`` and ``accounts`` entries of the server's configuration
    (nats-server reads JSON as configuration)."""
    return {
        "no_auth_user": ANONYMOUS_USER,
        "accounts": {
            "PQKMS": {
                "jetstream": "enabled",
                "users": [{
                    "user": WORKER_USER,
                    "password": credentials.worker_password,
                    "permissions": {
                        "publish": {"allow": list(WORKER_PUBLISH)},
                        "subscribe": {"allow": list(WORKER_SUBSCRIBE)},
                        # Replies go to each requester's reply subject, once per request.
                        "allow_responses": True,
                    },
                }],
                "exports": [{"service": subject} for subject in OPERATION_SUBJECTS],
            },
            "BRIDGE": {
                "users": [{"user": BRIDGE_USER, "password": credentials.bridge_password,
                           "permissions": _caller_permissions()}],
                "imports": _service_imports(),
            },
            "APP": {
                "users": [{"user": ANONYMOUS_USER, "password": credentials.anonymous_password,
                           "permissions": _caller_permissions()}],
                "imports": _service_imports(),
            },
        },
    }
