"""A stand-in for the pqkms worker, for the bridge's own tests only.

It is NOT the worker: it serves every ``pqkms.v1.>`` subject in the workers' queue
group and answers like a worker would, from scripted behaviour. End-to-end tests
with the real worker live elsewhere; nothing here should be reused as worker code.

It runs in its own thread and event loop, so synchronous clients (the qpher SDK,
schemathesis) can call the bridge while it answers.

Modes:
- ``echo`` (default): ``data`` = the subject, the decoded request body and headers.
- ``realistic``: checks the API key (``qph_`` prefix), validates the body with the
  request model from ``schemas.OPERATIONS`` and answers a plausible result.
Overrides (any mode): ``error_code`` (answer that error), ``delay_seconds`` (be
slow), ``raw_reply`` (answer exactly these bytes), ``reply_headers``,
``healthy`` (health ping answers ok or not).
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError

from schemas import (
    HEADER_API_KEY,
    HEADER_INPUT_ERROR,
    HEADER_REQUEST_ID,
    HEADER_RETRY_AFTER,
    QUEUE_GROUP,
    ErrorCode,
    Subject,
    describe_validation_error,
    error_envelope,
    new_request_id,
    success_envelope,
    utc_timestamp,
)
from schemas.batch import BATCH_OF
from schemas.operations import operation_for
from worker.handlers.ordered_flush import send_pings_behind_queued_commands

__all__ = ["FakeWorker", "Received"]


@dataclass(frozen=True)
class Received:
    """One request as the worker saw it."""

    subject: str
    raw: bytes
    headers: dict[str, str]

    @property
    def body(self) -> Any:
        """The decoded JSON body."""
        return orjson.loads(self.raw)


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_info(algorithm: str, version: int, status: str = "active") -> dict[str, Any]:
    return {
        "key_version": version,
        "algorithm": algorithm,
        "status": status,
        "public_key": _b64(b"fake-spki-" + algorithm.encode()),
        "created_at": utc_timestamp(),
    }


def _realistic_result(subject: Subject, body: dict[str, Any]) -> dict[str, Any]:
    """A result of the right shape for each operation (values are fake)."""
    version = body.get("key_version", 1)
    algorithm = body.get("algorithm")
    kem = algorithm or "Kyber768"
    sig = algorithm or "Dilithium3"
    any_algorithm = algorithm or "Kyber768"
    results: dict[Subject, Any] = {
        Subject.KEM_ENCRYPT: lambda: {"ciphertext": _b64(b"ct"), "key_version": version,
                                      "algorithm": kem},
        Subject.KEM_DECRYPT: lambda: {"plaintext": _b64(b"hello"), "key_version": version,
                                      "algorithm": kem},
        Subject.KEM_ENCAPSULATE: lambda: {"kem_ciphertext": _b64(b"kc"),
                                          "shared_secret": _b64(b"s" * 32),
                                          "key_version": version, "algorithm": kem},
        Subject.KEM_DECAPSULATE: lambda: {"shared_secret": _b64(b"s" * 32),
                                          "key_version": version, "algorithm": kem},
        Subject.KEM_KEY_WRAP: lambda: {"wrapped_key": _b64(b"wk"), "key_version": version,
                                       "algorithm": kem, "wrapping_method": "HPKE"},
        Subject.KEM_KEY_UNWRAP: lambda: {"symmetric_key": _b64(b"k" * 32),
                                         "key_version": version, "algorithm": kem},
        Subject.SIGNATURE_SIGN: lambda: {"signature": _b64(b"sig"), "key_version": version,
                                         "algorithm": sig},
        Subject.SIGNATURE_VERIFY: lambda: {"valid": True, "key_version": version,
                                           "algorithm": sig},
        Subject.SIGNATURE_SIGN_HASH: lambda: {
            "signature": _b64(b"sig"), "key_version": version, "algorithm": sig,
            "hash_algorithm": body.get("hash_algorithm", "SHA-256"),
            "signature_type": "HashML-DSA"},
        Subject.SIGNATURE_VERIFY_HASH: lambda: {
            "valid": True, "key_version": version, "algorithm": sig,
            "hash_algorithm": body.get("hash_algorithm", "SHA-256")},
        Subject.KEYS_GENERATE: lambda: _key_info(any_algorithm, 1),
        Subject.KEYS_LIST: lambda: {"keys": [_key_info(any_algorithm, 1,
                                                       body.get("status") or "active")],
                                    "total": 1},
        Subject.KEYS_ACTIVE: lambda: _key_info(any_algorithm, 1),
        Subject.KEYS_GET: lambda: _key_info(any_algorithm, version),
        Subject.KEYS_ROTATE: lambda: {**_key_info(any_algorithm, 2), "old_key_version": 1},
        Subject.KEYS_RETIRE: lambda: _key_info(any_algorithm, version, "retired"),
        Subject.KEYS_ARCHIVE: lambda: _key_info(any_algorithm, version, "archived"),
    }
    if subject in BATCH_OF:
        items = body.get("items") or []
        data = [{"data": _realistic_result(BATCH_OF[subject], body)} for _ in items]
        return {"results": data, "total": len(data), "succeeded": len(data), "failed": 0}
    result: dict[str, Any] = results[subject]()
    return result


@dataclass
class FakeWorker:
    """Scripted worker on a real NATS server; see the module docstring."""

    nats_url: str
    mode: str = "echo"
    error_code: str | None = None
    error_message: str | None = None
    retry_after: int | None = None
    delay_seconds: float = 0.0
    raw_reply: bytes | None = None
    reply_headers: dict[str, str] = field(default_factory=dict)
    healthy: bool = True
    health: dict[str, Any] | None = None  # the ping's data when healthy; None: ok
    received: list[Received] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _client: NatsClient | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> FakeWorker:
        """Connect and subscribe; returns once the subscription is live on the server."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-worker",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(15)
        return self

    def stop(self) -> None:
        """Close the connection (the queue group loses this member) and the thread."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(15)
        self._loop.close()
        self._loop = None

    def requests_on(self, subject: str) -> list[Received]:
        """Requests received on one subject (health pings included when asked for)."""
        return [r for r in self.received if r.subject == subject]

    @property
    def last(self) -> Received:
        """The last non-health request."""
        return [r for r in self.received if r.subject != Subject.HEALTH_PING][-1]

    async def _subscribe(self) -> None:
        self._client = await nats.connect(
            self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
            name="fake-worker",
        )
        # As the worker does: without it, the flush below can return before nats-server
        # has the SUB, and the bridge's first request meets "no responders" (a 503).
        send_pings_behind_queued_commands(self._client)
        await self._client.subscribe("pqkms.v1.>", queue=QUEUE_GROUP, cb=self._on_message)
        await self._client.flush()

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    async def _on_message(self, msg: Msg) -> None:
        # One task per message, so a slow answer does not hold up the others.
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        self.received.append(Received(msg.subject, msg.data, headers))
        request_id = _header(headers, HEADER_REQUEST_ID) or new_request_id()
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        reply_headers = {HEADER_REQUEST_ID: request_id, **self.reply_headers}
        if self.raw_reply is not None:
            payload = self.raw_reply
        else:
            envelope = self._envelope(msg.subject, msg.data, headers, request_id)
            if "error" in envelope and envelope["error"]["code"] == ErrorCode.RATE_LIMITED:
                retry = envelope["error"].get("retry_after")
                if retry is not None and HEADER_RETRY_AFTER not in reply_headers:
                    reply_headers[HEADER_RETRY_AFTER] = str(retry)
            payload = orjson.dumps(envelope)
        self.replies.append(payload)
        assert self._client is not None and msg.reply
        await self._client.publish(msg.reply, payload, headers=reply_headers)

    def _envelope(
        self, subject: str, raw: bytes, headers: dict[str, str], request_id: str
    ) -> dict[str, Any]:
        if subject == Subject.HEALTH_PING:
            if self.healthy:
                data = self.health or {"status": "ok", "worker": "fake"}
                return success_envelope(data, request_id)
            return error_envelope(ErrorCode.SERVICE_UNAVAILABLE, request_id, "not ready")
        if self.error_code is not None:
            return self._error(self.error_code, request_id)
        body = orjson.loads(raw)
        # Parameters the bridge found invalid: a 400 once the API key passed, as the
        # worker answers it (echo mode checks no key).
        input_error = _header(headers, HEADER_INPUT_ERROR)
        if self.mode == "echo":
            if input_error is not None:
                return error_envelope(ErrorCode.INVALID, request_id, unquote(input_error))
            return success_envelope({"subject": subject, "body": body, "headers": headers},
                                    request_id)
        api_key = _header(headers, HEADER_API_KEY)
        if not api_key or not api_key.startswith("qph_"):
            return error_envelope(ErrorCode.AUTH, request_id)
        if input_error is not None:
            return error_envelope(ErrorCode.INVALID, request_id, unquote(input_error))
        operation = operation_for(Subject(subject))
        try:
            operation.request.model_validate(body)
        except ValidationError as exc:
            return error_envelope(ErrorCode.INVALID, request_id, describe_validation_error(exc))
        return success_envelope(_realistic_result(operation.subject, body), request_id)

    def _error(self, code: str, request_id: str) -> dict[str, Any]:
        try:
            known = ErrorCode(code)
        except ValueError:
            envelope = error_envelope(ErrorCode.INTERNAL, request_id, self.error_message)
            envelope["error"]["code"] = envelope["error"]["error_code"] = code
            return envelope
        return error_envelope(known, request_id, self.error_message, self.retry_after)
