"""Request bodies and callers: bare responder and pqkms over NATS, pqkms over HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping

import orjson
from nats.aio.client import Client as NatsClient

from bench.http_client import HttpPool
from bench.measure import Call
from bench.responder import SUBJECT_PREFIX
from schemas.subjects import HEADER_API_KEY, Subject

__all__ = [
    "ALGORITHMS", "BATCH_SUBJECTS", "HTTP_PATHS", "JOB_OPERATIONS", "PQKMS_SUBJECTS", "Bodies",
    "http_call", "item_error", "nats_call",
]

PQKMS_SUBJECTS: Mapping[str, str] = {
    "encrypt": Subject.KEM_ENCRYPT.value,
    "decrypt": Subject.KEM_DECRYPT.value,
    "sign": Subject.SIGNATURE_SIGN.value,
    "verify": Subject.SIGNATURE_VERIFY.value,
}
FLOOR_SUBJECTS: Mapping[str, str] = {
    name: f"{SUBJECT_PREFIX}.{name}" for name in ("encrypt", "decrypt", "sign", "verify")
}
BATCH_SUBJECTS: Mapping[str, str] = {
    name: f"{subject}.batch" for name, subject in PQKMS_SUBJECTS.items()
}
# A job's operation: the single operation's subject without its prefix (docs/jobs.md).
JOB_OPERATIONS: Mapping[str, str] = {
    name: subject.removeprefix("pqkms.v1.") for name, subject in PQKMS_SUBJECTS.items()
}
HTTP_PATHS: Mapping[str, str] = {
    name: "/api/v1/" + subject.removeprefix("pqkms.v1.").replace(".", "/")
    for name, subject in PQKMS_SUBJECTS.items()
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ALGORITHMS: Mapping[str, str] = {
    "encrypt": "Kyber768", "decrypt": "Kyber768", "sign": "Dilithium3", "verify": "Dilithium3",
}


class Bodies:
    """Request bodies of the four operations: single bodies encoded once, and the same
    item without its key (for batches and jobs, whose key is named once)."""

    def __init__(self, payload: bytes, ciphertext: bytes, signature: bytes) -> None:
        self.items: dict[str, dict[str, str]] = {
            "encrypt": {"plaintext": _b64(payload)},
            "decrypt": {"ciphertext": _b64(ciphertext)},
            "sign": {"message": _b64(payload)},
            "verify": {"message": _b64(payload), "signature": _b64(signature)},
        }
        self.encoded: dict[str, bytes] = {
            operation: orjson.dumps({**item, **self.key(operation)})
            for operation, item in self.items.items()
        }

    def __getitem__(self, operation: str) -> bytes:
        return self.encoded[operation]

    @staticmethod
    def key(operation: str) -> dict[str, int | str]:
        """The key every benchmark request names: version 1 of the operation's algorithm."""
        return {"key_version": 1, "algorithm": ALGORITHMS[operation]}

    def batch(self, operation: str, items: int) -> bytes:
        """One batch request of ``items`` identical items."""
        return orjson.dumps({"items": [self.items[operation]] * items, **self.key(operation)})


def _check(operation: str, reply: bytes) -> str | None:
    if not reply.startswith(b'{"data"'):
        return reply[:200].decode(errors="replace")
    if operation == "verify" and b'"valid":true' not in reply:
        return "signature did not verify"
    return None


def item_error(operation: str, result: Mapping[str, object]) -> str | None:
    """What is wrong with one batch or job result (an error, or a signature that did not
    verify), or ``None``."""
    data = result.get("data")
    if not isinstance(data, Mapping):
        return str(result.get("error", result))[:200]
    if operation == "verify" and data.get("valid") is not True:
        return "signature did not verify"
    return None


def nats_call(client: NatsClient, subject: str, operation: str, body: bytes,
              api_key: str | None = None, timeout: float = 30.0) -> Call:
    """One NATS request per call; the reply must be a success envelope."""
    headers = {HEADER_API_KEY: api_key} if api_key else None
    request = client.request

    async def call() -> str | None:
        try:
            reply = await request(subject, body, timeout=timeout, headers=headers)
        except Exception as exc:
            return type(exc).__name__
        return _check(operation, reply.data)

    return call


def http_call(pool: HttpPool, operation: str, body: bytes) -> Call:
    """One HTTP POST per call on a pooled keep-alive connection; 200 and a success
    envelope."""
    path = HTTP_PATHS[operation]
    post = pool.post

    async def call() -> str | None:
        try:
            response = await post(path, body)
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as exc:
            return type(exc).__name__
        if response.status != 200:
            return f"HTTP {response.status}: {response.body[:200].decode(errors='replace')}"
        return _check(operation, response.body)

    return call
