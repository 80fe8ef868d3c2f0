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

__all__ = ["HTTP_PATHS", "PQKMS_SUBJECTS", "Bodies", "http_call", "nats_call"]

PQKMS_SUBJECTS: Mapping[str, str] = {
    "encrypt": Subject.KEM_ENCRYPT.value,
    "decrypt": Subject.KEM_DECRYPT.value,
    "sign": Subject.SIGNATURE_SIGN.value,
    "verify": Subject.SIGNATURE_VERIFY.value,
}
FLOOR_SUBJECTS: Mapping[str, str] = {
    name: f"{SUBJECT_PREFIX}.{name}" for name in ("encrypt", "decrypt", "sign", "verify")
}
HTTP_PATHS: Mapping[str, str] = {
    name: "/api/v1/" + subject.removeprefix("pqkms.v1.").replace(".", "/")
    for name, subject in PQKMS_SUBJECTS.items()
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Bodies:
    """JSON request bodies of the four operations, encoded once."""

    def __init__(self, payload: bytes, ciphertext: bytes, signature: bytes) -> None:
        kem = {"key_version": 1, "algorithm": "Kyber768"}
        dsa = {"key_version": 1, "algorithm": "Dilithium3"}
        self.encoded: dict[str, bytes] = {
            "encrypt": orjson.dumps({"plaintext": _b64(payload), **kem}),
            "decrypt": orjson.dumps({"ciphertext": _b64(ciphertext), **kem}),
            "sign": orjson.dumps({"message": _b64(payload), **dsa}),
            "verify": orjson.dumps(
                {"message": _b64(payload), "signature": _b64(signature), **dsa}
            ),
        }

    def __getitem__(self, operation: str) -> bytes:
        return self.encoded[operation]


def _check(operation: str, reply: bytes) -> str | None:
    if not reply.startswith(b'{"data"'):
        return reply[:200].decode(errors="replace")
    if operation == "verify" and b'"valid":true' not in reply:
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
