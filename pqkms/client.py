"""A Python client for microservices: every pqkms operation over NATS, batches and jobs.

```python
async with await PqkmsClient.connect("nats://127.0.0.1:4222", api_key) as client:
    sealed = await client.encrypt(b"hello", key_version=1)
    assert await client.decrypt(sealed["ciphertext"], key_version=1) == b"hello"
    job_id = await client.submit_job("kem.encrypt", [{"plaintext": ...}], key_version=1)
    await client.wait_for_job(job_id)
    async for result in client.job_results(job_id):
        ...
    await client.delete_job(job_id)  # its results leave JetStream now, not in a week
```

Requests that were not processed are retried: ``ERR_RATE_001`` after the reply's
``retry_after``, ``ERR_SERVICE_001`` and "no worker listening" with a short back-off.
A timeout is not retried (the request may have been processed). ``SyncPqkmsClient``
offers the same methods without ``await``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import uuid
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    MaxPayloadError,
    NoRespondersError,
    OutboundBufferLimitError,
)
from nats.errors import TimeoutError as NatsTimeoutError

from schemas.batch import DEFAULT_MAX_BATCH_ITEMS, REPLY_ENVELOPE_BYTES, reply_bound_of
from schemas.errors import ErrorCode
from schemas.fields import b64encode
from schemas.jobs import JobOperation
from schemas.nats_message import counted_size
from schemas.reply_budget import ReplyBudget
from schemas.subjects import HEADER_API_KEY, HEADER_REQUEST_ID, Subject

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = [
    "DEFAULT_MESSAGE_LIMIT",
    "DEFAULT_REPLIES_IN_FLIGHT_BYTES",
    "ItemTooLargeError",
    "PqkmsClient",
    "PqkmsError",
    "SyncPqkmsClient",
    "split_items",
]

T = TypeVar("T")

# A worker's default message limit: PQKMS_MAX_MESSAGE_BYTES (1 MiB) * 4/3 + 64 KiB.
DEFAULT_MESSAGE_LIMIT = 1024 * 1024 * 4 // 3 + 64 * 1024
# Half of nats-server's default max_pending (schemas/reply_budget.py).
DEFAULT_REPLIES_IN_FLIGHT_BYTES = 32 * 1024 * 1024
_HEADROOM = 8192  # the request's own fields around its items
_RETRIED = {ErrorCode.RATE_LIMITED.value, ErrorCode.SERVICE_UNAVAILABLE.value}


def _b64(data: bytes | str) -> str:
    return data if isinstance(data, str) else b64encode(data)


class PqkmsError(Exception):
    """An error envelope: ``code`` (e.g. ``ERR_KEM_005``), ``message``, ``request_id``."""

    def __init__(self, code: str, message: str, request_id: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after


class ItemTooLargeError(ValueError):
    """One item that does not fit in one message even alone: no batch or chunk holding
    it could be sent. ``index`` is its position in the items given, ``size`` the larger
    of its request and the bound of its result, ``limit`` the message limit cut for."""

    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(
            f"item {index} cannot fit in one message: with its result it needs {size:,} "
            f"bytes, over the {limit:,}-byte message limit less {_HEADROOM:,} bytes for "
            "the request's own fields (an item holds at most 1 MiB of plaintext or "
            "message by default)")
        self.index = index
        self.size = size
        self.limit = limit


def split_items(
    operation: JobOperation | str,
    items: Sequence[dict[str, Any]],
    max_items: int = DEFAULT_MAX_BATCH_ITEMS,
    message_limit: int = DEFAULT_MESSAGE_LIMIT,
) -> list[list[dict[str, Any]]]:
    """Cut items into batches (or job chunks) whose request and reply each fit in one
    message, with at most ``max_items`` items each.

    Raises :class:`ItemTooLargeError` (a ``ValueError``) for an item that alone does not
    fit: a batch holding it could not be sent (nats-py's ``MaxPayloadError``, or the
    worker's ``ERR_INVALID_001``). An item within that size but over the per-item limit
    (1 MiB of plaintext) is cut as any other and gets its own error from the worker.
    """
    reply_bound = reply_bound_of(JobOperation(operation).subject)
    budget = message_limit - _HEADROOM
    groups: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    request_bytes = reply_bytes = REPLY_ENVELOPE_BYTES
    for index, item in enumerate(items):
        item_request = len(orjson.dumps(item)) + 1
        item_reply = reply_bound(item)
        alone = REPLY_ENVELOPE_BYTES + max(item_request, item_reply)
        if alone > budget:
            raise ItemTooLargeError(index, alone, message_limit)
        if current and (len(current) >= max_items or request_bytes + item_request > budget
                        or reply_bytes + item_reply > budget):
            groups.append(current)
            current, request_bytes, reply_bytes = [], REPLY_ENVELOPE_BYTES, REPLY_ENVELOPE_BYTES
        current.append(item)
        request_bytes += item_request
        reply_bytes += item_reply
    if current:
        groups.append(current)
    return groups


@dataclass
class _Retry:
    attempts: int = 30
    backoff: float = 0.2
    max_backoff: float = 5.0


class PqkmsClient:
    """Async client on a nats-py connection (its own, from :meth:`connect`, or yours)."""

    def __init__(self, connection: Client, api_key: str, *, timeout: float = 30.0,
                 retries: int = 30, message_limit: int = DEFAULT_MESSAGE_LIMIT,
                 max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
                 replies_in_flight_bytes: int = DEFAULT_REPLIES_IN_FLIGHT_BYTES,
                 owns_connection: bool = False) -> None:
        self._nc = connection
        self._api_key = api_key
        self._timeout = timeout
        self._retry = _Retry(attempts=retries)
        self._message_limit = message_limit
        self._max_batch_items = max_batch_items
        # Requests wait while their replies would pile up past nats-server's max_pending
        # (schemas/reply_budget.py): many large requests at once then queue here instead
        # of the server cutting the connection off as a slow consumer.
        self._budget = ReplyBudget(replies_in_flight_bytes, message_limit)
        self._owns = owns_connection

    @classmethod
    async def connect(cls, servers: str | list[str], api_key: str, *,
                      connect_timeout: float = 10.0,
                      nats_options: Mapping[str, Any] | None = None,
                      **options: Any) -> PqkmsClient:
        """Connect to NATS and return a client owning the link.

        Once connected the link reconnects forever; the first connection gives up after
        ``connect_timeout`` seconds with :class:`ConnectionError`, quietly (nats-py would
        otherwise retry it forever and print every failure). ``nats_options`` are extra
        ``nats.connect`` arguments, e.g. credentials and TLS (see :meth:`from_settings`).
        """
        if isinstance(servers, str):
            servers = [url.strip() for url in servers.split(",") if url.strip()]
        errors: list[str] = []

        async def remember(exc: Exception) -> None:
            errors.append(str(exc) or type(exc).__name__)

        try:
            connection = await asyncio.wait_for(nats.connect(
                servers, max_reconnect_attempts=-1, reconnect_time_wait=1,
                error_cb=remember, **(nats_options or {})), connect_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            reason = errors[-1] if errors else (str(exc) or type(exc).__name__)
            raise ConnectionError(
                f"cannot connect to NATS at {', '.join(servers)}: {reason}"
            ) from None
        return cls(connection, api_key, owns_connection=True, **options)

    @classmethod
    async def from_settings(cls, settings: Settings, api_key: str, *,
                            connect_timeout: float = 10.0, **options: Any) -> PqkmsClient:
        """Connect as ``PQKMS_NATS_*`` settings say: servers, credentials and TLS.

        Raises ``worker.nats_security.NatsSecurityError`` on conflicting settings.
        """
        from worker.nats_security import nats_security

        return await cls.connect(settings.nats_url, api_key, connect_timeout=connect_timeout,
                                 nats_options=nats_security(settings).nats_py_options(),
                                 **options)

    async def close(self) -> None:
        """Close the connection if this client opened it."""
        if self._owns:
            await self._nc.drain()

    async def __aenter__(self) -> PqkmsClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- transport ---------------------------------------------------------------------

    @property
    def fitting_message_limit(self) -> int:
        """The message limit batches and chunks are cut for: the one given, or the
        server's ``max_payload`` where that is lower."""
        return min(self._message_limit, self._nc.max_payload)

    async def request(self, subject: Subject | str, body: dict[str, Any],
                      timeout: float | None = None, *,
                      idempotent: bool = False, retry_unavailable: bool = True,
                      ) -> dict[str, Any]:
        """One request; returns the envelope's ``data`` or raises :class:`PqkmsError`.

        ``idempotent`` requests (job submit, status, results) are also retried after a
        timeout or a lost connection, since repeating them changes nothing.
        ``retry_unavailable=False``: an ``ERR_SERVICE_001`` is raised, not retried (a
        job delete may have been done in part).
        """
        payload = orjson.dumps(body)
        headers = {HEADER_API_KEY: self._api_key, HEADER_REQUEST_ID: str(uuid.uuid4())}
        if counted_size(payload, headers) > self._nc.max_payload:
            # As nats-py for a payload over the limit by itself; sent, a message over it
            # with its headers would make the server close this connection.
            raise MaxPayloadError
        delay = self._retry.backoff
        for attempt in range(self._retry.attempts + 1):
            last = attempt == self._retry.attempts
            try:
                reply = await self._send(str(subject), payload, headers,
                                         timeout or self._timeout)
            except NoRespondersError:
                if last:
                    raise PqkmsError(ErrorCode.SERVICE_UNAVAILABLE.value,
                                     "No pqkms worker is listening") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry.max_backoff)
                continue
            except (NatsTimeoutError, ConnectionClosedError, OutboundBufferLimitError):
                if not idempotent or last:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry.max_backoff)
                continue
            envelope = orjson.loads(reply.data)
            error = envelope.get("error")
            if error is None:
                data: dict[str, Any] = envelope["data"]
                return data
            code = error.get("code", ErrorCode.INTERNAL.value)
            if code in _RETRIED and not last and (
                    retry_unavailable or code != ErrorCode.SERVICE_UNAVAILABLE.value):
                wait = error.get("retry_after")
                await asyncio.sleep(float(wait) if wait else delay)
                delay = min(delay * 2, self._retry.max_backoff)
                continue
            raise PqkmsError(code, error.get("message", ""), envelope.get("request_id"),
                             error.get("retry_after"))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str],
                    timeout: float) -> Msg:
        """One request on the connection, within the reply budget."""
        charge = self._budget.charge_for(subject, len(payload))
        try:
            await self._budget.take(charge, timeout)
        except TimeoutError:
            raise NatsTimeoutError from None  # as for a reply that did not come in time
        try:
            return await self._nc.request(subject, payload, headers=headers, timeout=timeout)
        finally:
            self._budget.give_back(charge)

    # -- KEM -----------------------------------------------------------------------------

    async def encrypt(self, plaintext: bytes, key_version: int, *, algorithm: str | None = None,
                      mode: str | None = None, salt: bytes | None = None) -> dict[str, Any]:
        """``kem/encrypt``: returns ``ciphertext`` (base64), ``key_version``, ``algorithm``."""
        body = _fields(plaintext=_b64(plaintext), key_version=key_version, algorithm=algorithm,
                       mode=mode, salt=_b64(salt) if salt is not None else None)
        return await self.request(Subject.KEM_ENCRYPT, body)

    async def decrypt(self, ciphertext: bytes | str, key_version: int, *,
                      algorithm: str | None = None) -> bytes:
        """``kem/decrypt``: the plaintext bytes."""
        data = await self.request(Subject.KEM_DECRYPT, _fields(
            ciphertext=_b64(ciphertext), key_version=key_version, algorithm=algorithm))
        return base64.b64decode(data["plaintext"])

    async def encapsulate(self, key_version: int, *,
                          algorithm: str | None = None) -> dict[str, Any]:
        """``kem/encapsulate``."""
        return await self.request(Subject.KEM_ENCAPSULATE,
                                  _fields(key_version=key_version, algorithm=algorithm))

    async def decapsulate(self, kem_ciphertext: bytes | str, key_version: int, *,
                          algorithm: str | None = None) -> dict[str, Any]:
        """``kem/decapsulate``."""
        return await self.request(Subject.KEM_DECAPSULATE, _fields(
            kem_ciphertext=_b64(kem_ciphertext), key_version=key_version, algorithm=algorithm))

    async def wrap_key(self, symmetric_key: bytes, key_version: int, *,
                       algorithm: str | None = None) -> dict[str, Any]:
        """``kem/key/wrap``."""
        return await self.request(Subject.KEM_KEY_WRAP, _fields(
            symmetric_key=_b64(symmetric_key), key_version=key_version, algorithm=algorithm))

    async def unwrap_key(self, wrapped_key: bytes | str, key_version: int, *,
                         algorithm: str | None = None) -> bytes:
        """``kem/key/unwrap``: the symmetric key bytes."""
        data = await self.request(Subject.KEM_KEY_UNWRAP, _fields(
            wrapped_key=_b64(wrapped_key), key_version=key_version, algorithm=algorithm))
        return base64.b64decode(data["symmetric_key"])

    # -- signatures ------------------------------------------------------------------------

    async def sign(self, message: bytes, key_version: int, *, algorithm: str | None = None,
                   context: bytes | None = None) -> dict[str, Any]:
        """``signature/sign``."""
        return await self.request(Subject.SIGNATURE_SIGN, _fields(
            message=_b64(message), key_version=key_version, algorithm=algorithm,
            context=_b64(context) if context is not None else None))

    async def verify(self, message: bytes, signature: bytes | str, key_version: int, *,
                     algorithm: str | None = None, context: bytes | None = None) -> bool:
        """``signature/verify``: whether the signature is valid."""
        data = await self.request(Subject.SIGNATURE_VERIFY, _fields(
            message=_b64(message), signature=_b64(signature), key_version=key_version,
            algorithm=algorithm, context=_b64(context) if context is not None else None))
        return bool(data["valid"])

    async def sign_hash(self, digest: bytes, hash_algorithm: str, key_version: int, *,
                        algorithm: str | None = None) -> dict[str, Any]:
        """``signature/sign-hash``."""
        return await self.request(Subject.SIGNATURE_SIGN_HASH, _fields(
            hash=_b64(digest), hash_algorithm=hash_algorithm, key_version=key_version,
            algorithm=algorithm))

    async def verify_hash(self, digest: bytes, hash_algorithm: str, signature: bytes | str,
                          key_version: int, *, algorithm: str | None = None) -> bool:
        """``signature/verify-hash``: whether the signature is valid."""
        data = await self.request(Subject.SIGNATURE_VERIFY_HASH, _fields(
            hash=_b64(digest), hash_algorithm=hash_algorithm, signature=_b64(signature),
            key_version=key_version, algorithm=algorithm))
        return bool(data["valid"])

    # -- keys ------------------------------------------------------------------------------

    async def generate_key(self, algorithm: str) -> dict[str, Any]:
        """``kms/keys/generate``."""
        return await self.request(Subject.KEYS_GENERATE, {"algorithm": algorithm})

    async def list_keys(self, algorithm: str | None = None,
                        status: str | None = None) -> dict[str, Any]:
        """``kms/keys`` (list)."""
        return await self.request(Subject.KEYS_LIST,
                                  _fields(algorithm=algorithm, status=status))

    async def active_key(self, algorithm: str) -> dict[str, Any]:
        """``kms/keys/active``."""
        return await self.request(Subject.KEYS_ACTIVE, {"algorithm": algorithm})

    async def get_key(self, algorithm: str, key_version: int) -> dict[str, Any]:
        """``kms/keys/{algorithm}/{version}``."""
        return await self.request(Subject.KEYS_GET,
                                  {"algorithm": algorithm, "key_version": key_version})

    async def rotate_key(self, algorithm: str) -> dict[str, Any]:
        """``kms/keys/rotate``."""
        return await self.request(Subject.KEYS_ROTATE, {"algorithm": algorithm})

    async def retire_key(self, algorithm: str, key_version: int) -> dict[str, Any]:
        """``kms/keys/retire``."""
        return await self.request(Subject.KEYS_RETIRE,
                                  {"algorithm": algorithm, "key_version": key_version})

    async def archive_key(self, algorithm: str, key_version: int) -> dict[str, Any]:
        """``kms/keys/archive``."""
        return await self.request(Subject.KEYS_ARCHIVE,
                                  {"algorithm": algorithm, "key_version": key_version})

    # -- batches ---------------------------------------------------------------------------

    async def batch(self, operation: JobOperation | str, items: Sequence[dict[str, Any]], *,
                    key_version: int | None = None,
                    algorithm: str | None = None) -> list[dict[str, Any]]:
        """Every item's result (``data`` or ``error``, with its ``reference``), in order;
        split into as many batch requests as the message size and ``max_batch_items``
        need. Not split by the plan's burst: a batch of more items than the burst is
        refused (``ERR_INVALID_001``); a job waits for the rate instead.

        An item too large for one message even alone raises :class:`ItemTooLargeError`
        before any request is sent."""
        op = JobOperation(operation)
        groups = split_items(op, items, self._max_batch_items, self.fitting_message_limit)
        results: list[dict[str, Any]] = []
        for group in groups:
            data = await self.request(op.batch_subject, _fields(
                items=group, key_version=key_version, algorithm=algorithm))
            results.extend(data["results"])
        return results

    # -- jobs ------------------------------------------------------------------------------

    async def submit_chunk(self, job_id: str, operation: JobOperation | str, chunk_index: int,
                           total_chunks: int, items: Sequence[dict[str, Any]], *,
                           key_version: int | None = None,
                           algorithm: str | None = None) -> dict[str, Any]:
        """Queue one chunk of a job (safe to repeat: de-duplicated)."""
        return await self.request(Subject.JOBS_SUBMIT, _fields(
            job_id=job_id, operation=JobOperation(operation).value, chunk_index=chunk_index,
            total_chunks=total_chunks, items=list(items), key_version=key_version,
            algorithm=algorithm), idempotent=True)

    async def submit_job(self, operation: JobOperation | str, items: Sequence[dict[str, Any]],
                         *, job_id: str | None = None, chunk_items: int = 500,
                         key_version: int | None = None, algorithm: str | None = None,
                         concurrency: int = 4) -> str:
        """Split items into chunks and queue them all; returns the job id. Submitting the
        same items with the same job id again queues nothing twice. A job holds at least
        one item: no items is a ``ValueError`` (there would be no job to ask about), and
        an item too large for one message even alone is an :class:`ItemTooLargeError`
        (a ``ValueError`` too), both before any chunk is queued."""
        if not items:
            raise ValueError("a job needs at least one item; there is nothing to submit")
        job_id = job_id or uuid.uuid4().hex
        chunks = split_items(operation, items, min(chunk_items, self._max_batch_items),
                             self.fitting_message_limit)
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int, chunk: list[dict[str, Any]]) -> None:
            async with gate:
                await self.submit_chunk(job_id, operation, index, len(chunks), chunk,
                                        key_version=key_version, algorithm=algorithm)

        await asyncio.gather(*(one(index, chunk) for index, chunk in enumerate(chunks)))
        return job_id

    async def job_status(self, job_id: str) -> dict[str, Any]:
        """``chunks_done`` of ``total_chunks``, item counts, ``state``."""
        return await self.request(Subject.JOBS_STATUS, {"job_id": job_id}, idempotent=True)

    async def wait_for_job(self, job_id: str, *, poll_seconds: float = 0.5,
                           timeout: float | None = None,
                           progress: Callable[[dict[str, Any]], None] | None = None,
                           ) -> dict[str, Any]:
        """Poll the status until the job is completed; returns the final status."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            status = await self.job_status(job_id)
            if progress is not None:
                progress(status)
            if status["state"] == "completed":
                return status
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError(f"job {job_id} not completed after {timeout} s")
            await asyncio.sleep(poll_seconds)

    async def delete_job(self, job_id: str) -> dict[str, Any]:
        """Delete a job: its chunks still queued (they never run), its results and its
        record. ``PqkmsError`` ERR_NOT_FOUND_001 for a job the tenant does not have (one
        deleted already, say); the same id may then be used for a new job. Not retried
        after a timeout or an ``ERR_SERVICE_001``: by then the id may name a new job,
        which a repeat would delete. Repeating a delete that failed is the caller's call
        (a 404 then means it is gone)."""
        return await self.request(Subject.JOBS_DELETE, {"job_id": job_id},
                                  retry_unavailable=False)

    async def chunk_results(self, job_id: str, chunk_index: int) -> dict[str, Any]:
        """One finished chunk's results (``PqkmsError`` ERR_NOT_FOUND_001 until done)."""
        return await self.request(Subject.JOBS_RESULTS,
                                  {"job_id": job_id, "chunk_index": chunk_index},
                                  idempotent=True)

    async def job_results(self, job_id: str, *, start_chunk: int = 0,
                          read_ahead: int = 2) -> AsyncIterator[dict[str, Any]]:
        """Every item's result of a completed job, chunk by chunk, in submit order.

        While one chunk's results are consumed, the next ``read_ahead`` chunks are already
        being read (0: one request at a time)."""
        # Closed with this generator: stopped early, its reads ahead are cancelled now.
        async with contextlib.aclosing(self.job_result_chunks(
                job_id, start_chunk=start_chunk, read_ahead=read_ahead)) as chunks:
            async for results in chunks:
                for result in results:
                    yield result

    async def job_result_chunks(self, job_id: str, *, start_chunk: int = 0,
                                read_ahead: int = 2,
                                ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """As :meth:`job_results`, one list per chunk (a chunk's results in order)."""
        status = await self.job_status(job_id)
        total = int(status["total_chunks"])
        read_ahead = max(0, read_ahead)
        reading: deque[asyncio.Future[dict[str, Any]]] = deque()
        next_index = start_chunk
        try:
            while next_index < total or reading:
                while next_index < total and len(reading) <= read_ahead:
                    reading.append(asyncio.ensure_future(self.chunk_results(job_id, next_index)))
                    next_index += 1
                chunk = await reading.popleft()
                yield list(chunk["results"])
        finally:
            # Stopped early (or a read failed): the reads ahead are not wanted any more.
            for pending in reading:
                pending.cancel()
            await asyncio.gather(*reading, return_exceptions=True)


def _fields(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


class SyncPqkmsClient:
    """The async client's methods, blocking, on an event loop in a background thread."""

    def __init__(self, servers: str | list[str], api_key: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="pqkms-client")
        self._thread.start()
        self._client = self._run(PqkmsClient.connect(servers, api_key, **options))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(method(*args, **kwargs))

        return call

    def job_results(self, job_id: str, *, start_chunk: int = 0,
                    read_ahead: int = 2) -> Generator[dict[str, Any], None, None]:
        """Every item's result of a completed job, in submit order, as they are read:
        one chunk's results are held at a time (plus the ``read_ahead`` chunks being
        read meanwhile), never the whole job."""
        chunks = self._client.job_result_chunks(job_id, start_chunk=start_chunk,
                                                read_ahead=read_ahead)

        async def next_chunk() -> list[dict[str, Any]] | None:
            try:
                return await chunks.__anext__()
            except StopAsyncIteration:
                return None

        async def stop() -> None:
            await chunks.aclose()

        try:
            while (results := self._run(next_chunk())) is not None:
                yield from results
        finally:
            # Stopped early: cancel the reads ahead, on the loop that started them.
            self._run(stop())

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> SyncPqkmsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
