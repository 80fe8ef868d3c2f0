"""NATS subjects: one per REST route, ``pqkms.v1.`` + the route path with ``/`` → ``.``."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "HEADER_API_KEY",
    "HEADER_REQUEST_ID",
    "HEADER_INPUT_ERROR",
    "HEADER_RETRY_AFTER",
    "QUEUE_GROUP",
    "RESERVED_REPLY_PREFIXES",
    "SUBJECT_PREFIX",
    "Subject",
    "WORKER_INBOX_PREFIX",
    "reply_subject_allowed",
]

SUBJECT_PREFIX = "pqkms.v1"
QUEUE_GROUP = "pqkms-workers"
# Where the workers take their own replies under `pqkms up` (pqkms.nats_access).
WORKER_INBOX_PREFIX = "_PQKMS_WORKER_INBOX"
# Reply subjects a worker never publishes to: the server's own APIs (JetStream, its
# buckets, the system account: "$..."), pqkms's own subjects (job chunks and results, key
# events, the audit stream, the operations) and the workers' own inboxes. A request's
# reply subject is the caller's choice; a worker that replied there would publish, with
# its own rights, what the caller may not (docs/decisions.md, "NATS security").
RESERVED_REPLY_PREFIXES = ("$", "pqkms.", f"{WORKER_INBOX_PREFIX}.")
HEADER_API_KEY = "X-API-Key"
HEADER_REQUEST_ID = "X-Request-ID"
HEADER_RETRY_AFTER = "Retry-After"
# Set by the HTTP bridge on a request whose query or path parameters it found invalid
# (percent-encoded message): the worker answers it with that 400 after the API key and
# the rate limit, as it would any other validation error (docs/http-api.md).
HEADER_INPUT_ERROR = "Pqkms-Input-Error"


class Subject(StrEnum):
    """Every operation's subject."""

    KEM_ENCRYPT = "pqkms.v1.kem.encrypt"
    KEM_DECRYPT = "pqkms.v1.kem.decrypt"
    KEM_ENCAPSULATE = "pqkms.v1.kem.encapsulate"
    KEM_DECAPSULATE = "pqkms.v1.kem.decapsulate"
    KEM_KEY_WRAP = "pqkms.v1.kem.key.wrap"
    KEM_KEY_UNWRAP = "pqkms.v1.kem.key.unwrap"
    SIGNATURE_SIGN = "pqkms.v1.signature.sign"
    SIGNATURE_VERIFY = "pqkms.v1.signature.verify"
    SIGNATURE_SIGN_HASH = "pqkms.v1.signature.sign-hash"
    SIGNATURE_VERIFY_HASH = "pqkms.v1.signature.verify-hash"
    KEYS_GENERATE = "pqkms.v1.kms.keys.generate"
    KEYS_LIST = "pqkms.v1.kms.keys.list"
    KEYS_ACTIVE = "pqkms.v1.kms.keys.active"
    KEYS_GET = "pqkms.v1.kms.keys.get"
    KEYS_ROTATE = "pqkms.v1.kms.keys.rotate"
    KEYS_RETIRE = "pqkms.v1.kms.keys.retire"
    KEYS_ARCHIVE = "pqkms.v1.kms.keys.archive"
    KEYS_ROTATION_POLICY_SET = "pqkms.v1.kms.keys.rotation-policy.set"
    KEYS_ROTATION_POLICY_GET = "pqkms.v1.kms.keys.rotation-policy.get"
    KEM_ENCRYPT_BATCH = "pqkms.v1.kem.encrypt.batch"
    KEM_DECRYPT_BATCH = "pqkms.v1.kem.decrypt.batch"
    SIGNATURE_SIGN_BATCH = "pqkms.v1.signature.sign.batch"
    SIGNATURE_VERIFY_BATCH = "pqkms.v1.signature.verify.batch"
    JOBS_SUBMIT = "pqkms.v1.jobs.submit"
    JOBS_STATUS = "pqkms.v1.jobs.status"
    JOBS_RESULTS = "pqkms.v1.jobs.results"
    JOBS_DELETE = "pqkms.v1.jobs.delete"
    HEALTH_PING = "pqkms.v1.health.ping"


def reply_subject_allowed(reply: str) -> bool:
    """Whether a worker may answer on ``reply``: not under ``RESERVED_REPLY_PREFIXES``,
    and no wildcard (a reply goes to one requester, never to a pattern)."""
    return not reply.startswith(RESERVED_REPLY_PREFIXES) and "*" not in reply \
        and ">" not in reply
