"""Batches: many encrypt, decrypt, sign or verify items through the single-item services.

Each item is validated and run on its own; a bad item becomes its own error object and
never fails the others. A batch is one request: each key version it names is looked up
(existence, state, material) once, and every item sees that answer. Rate limiting is
the transport's (one token per item, all or nothing). Encrypt, decrypt and verify items
in their common form skip the request and result models and run inline, slice by slice
(``worker.services.batch_inline``); sign items in theirs skip the models too
(``SignatureService.sign_lean``) and sign in the crypto threads. The reply is plain
JSON objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from schemas import batch, kem, signature
from schemas.algorithms import Algorithm
from schemas.batch import MAX_REFERENCE_CHARS, REPLY_ENVELOPE_BYTES, reply_bound_of
from schemas.errors import ErrorCode
from schemas.subjects import Subject
from schemas.validation import describe_validation_error
from worker.crypto import KemKey, SignatureKey
from worker.errors import ServiceError
from worker.services.batch_inline import INLINE_SUBJECTS, InlineItems, inline_items
from worker.services.batch_items import BatchOutcome, JsonObject, data_item, error_item
from worker.services.context import Caller
from worker.services.crypto_runner import CryptoRunner
from worker.services.kem import KemService
from worker.services.kem_items import LeanResult
from worker.services.key_access import KeyAccess, Usage
from worker.services.signatures import SignatureService
from worker.services.transient import is_unavailable

__all__ = ["BatchService"]

_log = structlog.get_logger("pqkms.worker")

SingleCall = Callable[[Caller, Any], Awaitable[BaseModel]]
# A single operation on a body in its common form, without the models; None for any
# other body (``SignatureService.sign_lean``, ``verify_lean``).
LeanSingleCall = Callable[[Caller, dict[str, Any]], Awaitable[LeanResult | None]]
# Items started together: signing runs in the crypto thread pool, so a few in flight
# keep its threads busy. Inline items (encrypt, decrypt, verify) gain nothing from
# running together and would pay for a task each, so they run one after another.
_WINDOW = 8
# KEM items run inline, so a batch hands the event loop back every this many items
# (≈ 1 ms here): requests arriving meanwhile — a lone encrypt, a job's status — wait for
# one slice, not for the whole batch or job chunk (docs/performance.md).
_ITEMS_PER_SLICE = 16


_KeyId = tuple[Algorithm, int, Usage]
LoadedT = TypeVar("LoadedT")


class _BatchKeys(KeyAccess):
    """A ``KeyAccess`` that answers each key version once per batch (errors included)."""

    def __init__(self, keys: KeyAccess) -> None:  # no super().__init__: it only delegates
        self._inner = keys
        self._kem: dict[_KeyId, KemKey | ServiceError] = {}
        self._signature: dict[_KeyId, SignatureKey | ServiceError] = {}

    async def _remember(
        self,
        memo: dict[_KeyId, LoadedT | ServiceError],
        load: Callable[[], Awaitable[LoadedT]],
        key_id: _KeyId,
    ) -> LoadedT:
        found = memo.get(key_id)
        if found is None:
            try:
                found = await load()
            except ServiceError as exc:
                if is_unavailable(exc):
                    raise  # the whole batch fails (503); a job chunk is done again later
                found = exc
            memo[key_id] = found
        if isinstance(found, ServiceError):
            raise ServiceError(found.code, found.message)
        return found

    async def kem_key(
        self, caller: Caller, algorithm: Algorithm, version: int, usage: Usage
    ) -> KemKey:
        """The inner answer, remembered for the rest of the batch."""
        return await self._remember(
            self._kem, lambda: self._inner.kem_key(caller, algorithm, version, usage),
            (algorithm, version, usage),
        )

    async def signature_key(
        self, caller: Caller, algorithm: Algorithm, version: int, usage: Usage
    ) -> SignatureKey:
        """The inner answer, remembered for the rest of the batch."""
        return await self._remember(
            self._signature,
            lambda: self._inner.signature_key(caller, algorithm, version, usage),
            (algorithm, version, usage),
        )


class BatchService:
    """Runs batches of single operations; also checks job chunks against the same limits."""

    def __init__(
        self,
        keys: KeyAccess,
        runner: CryptoRunner,
        max_message_bytes: int,
        max_items: int,
        message_limit: int,
    ) -> None:
        self._keys = keys
        self._runner = runner
        self._max_message_bytes = max_message_bytes
        self._max_items = max_items
        self._message_limit = message_limit
        self._inline_turn = asyncio.Lock()

    @property
    def message_limit(self) -> int:
        """The largest request or reply of one message, in bytes."""
        return self._message_limit

    def fit_message_limit(self, server_max_payload: int) -> None:
        """Size batches and job chunks for the server's ``max_payload`` when it is under
        the configured limit (a reply that could not be sent is refused up front)."""
        self._message_limit = min(self._message_limit, server_max_payload)

    def _single_calls(
        self, keys: KeyAccess
    ) -> dict[Subject, tuple[type[BaseModel], SingleCall, LeanSingleCall | None]]:
        """The single-item services, on ``keys`` (a view private to one batch): the
        request model, the call, and the call without models where there is one (KEM
        items take theirs in ``_run_inline``)."""
        kem_service = KemService(keys, self._runner, self._max_message_bytes)
        signatures = SignatureService(keys, self._runner, self._max_message_bytes)
        return {
            Subject.KEM_ENCRYPT: (kem.EncryptRequest, kem_service.encrypt, None),
            Subject.KEM_DECRYPT: (kem.DecryptRequest, kem_service.decrypt, None),
            Subject.SIGNATURE_SIGN: (signature.SignRequest, signatures.sign,
                                     signatures.sign_lean),
            Subject.SIGNATURE_VERIFY: (signature.VerifyRequest, signatures.verify,
                                       signatures.verify_lean),
        }

    @property
    def max_items(self) -> int:
        """Most items in one batch or job chunk."""
        return self._max_items

    async def encrypt(self, caller: Caller, request: batch.EncryptBatchRequest) -> BatchOutcome:
        """``kem/encrypt/batch``."""
        return await self._checked_run(Subject.KEM_ENCRYPT, caller, request.items,
                                       request.key_version, request.algorithm)

    async def decrypt(self, caller: Caller, request: batch.DecryptBatchRequest) -> BatchOutcome:
        """``kem/decrypt/batch``."""
        return await self._checked_run(Subject.KEM_DECRYPT, caller, request.items,
                                       request.key_version, request.algorithm)

    async def sign(self, caller: Caller, request: batch.SignBatchRequest) -> BatchOutcome:
        """``signature/sign/batch``."""
        return await self._checked_run(Subject.SIGNATURE_SIGN, caller, request.items,
                                       request.key_version, request.algorithm)

    async def verify(self, caller: Caller, request: batch.VerifyBatchRequest) -> BatchOutcome:
        """``signature/verify/batch``."""
        return await self._checked_run(Subject.SIGNATURE_VERIFY, caller, request.items,
                                       request.key_version, request.algorithm)

    async def _checked_run(
        self, single: Subject, caller: Caller, items: Sequence[Any],
        key_version: int | None, algorithm: str | None,
    ) -> BatchOutcome:
        self.check_limits(single, items)
        return await self.run(single, caller, items, key_version, algorithm)

    def check_limits(self, single: Subject, items: Sequence[Any], headroom: int = 0) -> None:
        """400 when a batch has too many items, or its request or reply would not fit in
        one message (less ``headroom`` bytes kept for a wrapper)."""
        if len(items) > self._max_items:
            raise ServiceError(
                ErrorCode.INVALID,
                f"Validation failed: items holds {len(items)} items, over the limit of "
                f"{self._max_items} per batch; split it or submit a bulk job",
            )
        limit = self._message_limit - headroom
        size = len(orjson.dumps(list(items)))
        if size > limit:
            raise ServiceError(
                ErrorCode.INVALID,
                f"Validation failed: the batch's items are {size} bytes, over the "
                f"{limit}-byte limit of one request; send fewer or smaller items",
            )
        reply = REPLY_ENVELOPE_BYTES + sum(map(reply_bound_of(single), items))
        if reply > limit:
            fitting = max(1, len(items) * limit // reply)
            raise ServiceError(
                ErrorCode.INVALID,
                f"Validation failed: the batch's reply could reach {reply} bytes, over the "
                f"{limit}-byte limit of one message; send at most about {fitting} such "
                "items per batch",
            )

    async def run(
        self,
        single: Subject,
        caller: Caller,
        items: Sequence[Any],
        key_version: int | None = None,
        algorithm: str | None = None,
    ) -> BatchOutcome:
        """Every item through the single operation, results in item order."""
        keys = _BatchKeys(self._keys)
        model, call, lean = self._single_calls(keys)[single]
        defaults: dict[str, Any] = {}
        if key_version is not None:
            defaults["key_version"] = key_version
        if algorithm is not None:
            # As the item would spell it: the readers without models take strings only.
            defaults["algorithm"] = (algorithm.value if isinstance(algorithm, Algorithm)
                                     else algorithm)
        results: list[JsonObject] = []
        if single in INLINE_SUBJECTS:
            # One batch's slices at a time: a request arriving meanwhile waits for one
            # slice at each of its steps, not for one slice of every batch in progress.
            async with self._inline_turn:
                results = await self._run_inline(single, caller, items, defaults, keys,
                                                 model, call, lean)
        else:
            for start in range(0, len(items), _WINDOW):
                window = items[start:start + _WINDOW]
                results.extend(await asyncio.gather(
                    *(self._one(single, model, call, caller, item, defaults, lean)
                      for item in window)
                ))
        # The one pass over the results (it was a count): the failed items' codes, for
        # the request's metrics and log line (RequestRecord.item_errors).
        codes = [result["error"]["code"] for result in results if "error" in result]
        return BatchOutcome(results, len(codes), codes)

    async def _run_inline(self, single: Subject, caller: Caller, items: Sequence[Any],
                          defaults: Mapping[str, Any], keys: KeyAccess,
                          model: type[BaseModel], call: SingleCall,
                          lean: LeanSingleCall | None) -> list[JsonObject]:
        """Encrypt, decrypt and verify items on the event loop, handing it back every
        ``_ITEMS_PER_SLICE`` items (``worker.services.batch_inline``).

        Each slice in three passes: read every item and look up the key versions they
        name, then the crypto of the whole slice back to back, then the result objects.
        Between other Python work OpenSSL's code and tables leave the CPU cache, and a
        seal costs ≈ 20 % more than in a loop (docs/performance.md)."""
        results: list[JsonObject] = []
        inline = inline_items(single, defaults, self._max_message_bytes)
        loaded: dict[tuple[Algorithm, int], Any] = {}  # the key, or its ServiceError
        for start in range(0, len(items), _ITEMS_PER_SLICE):
            if start:
                await asyncio.sleep(0)
            chunk = items[start:start + _ITEMS_PER_SLICE]
            reads = [inline.read(item) for item in chunk]
            for read in reads:
                if read is not None and (read.algorithm, read.key_version) not in loaded:
                    try:
                        key: Any = await inline.key(keys, caller, read)
                    except ServiceError as exc:
                        if is_unavailable(exc):
                            raise
                        key = exc
                    loaded[read.algorithm, read.key_version] = key
            outputs = [None if read is None
                       else self._crypt_item(single, caller, inline, loaded, read)
                       for read in reads]
            for item, read, output in zip(chunk, reads, outputs, strict=True):
                if read is None or output is None:
                    # Unusual or large: the single service (its model, its thread pool).
                    results.append(await self._one(single, model, call, caller, item,
                                                   defaults, lean))
                elif isinstance(output, dict):
                    results.append(output)  # the item's error
                else:
                    results.append(inline.answer(read, output))
        return results

    @staticmethod
    def _crypt_item(single: Subject, caller: Caller, inline: InlineItems[Any, Any, Any],
                    loaded: Mapping[tuple[Algorithm, int], Any], read: Any) -> Any:
        try:
            return inline.crypt(loaded[read.algorithm, read.key_version], read)
        except Exception:
            # As in _one: type and traceback only, and the other items go on.
            _log.exception("batch_item_failed", subject=single.value,
                           request_id=caller.request_id, tenant_id=caller.tenant_id)
            return error_item(ErrorCode.INTERNAL, None, read.reference)

    async def _one(
        self,
        single: Subject,
        model: type[BaseModel],
        call: SingleCall,
        caller: Caller,
        item: Any,
        defaults: Mapping[str, Any],
        lean: LeanSingleCall | None = None,
    ) -> JsonObject:
        """One item through the single operation: its result or its error object.
        ``lean``: the operation without models, tried first (it reads only the bodies
        the model reads the same way, and answers ``None`` for the rest)."""
        if not isinstance(item, dict):
            return error_item(ErrorCode.INVALID, "Validation failed: item must be a JSON object",
                              None)
        fields = dict(item)
        reference = fields.pop("reference", None)
        if reference is not None and not (
            isinstance(reference, str) and len(reference) <= MAX_REFERENCE_CHARS
        ):
            return error_item(
                ErrorCode.INVALID,
                f"Validation failed: reference must be a string of at most "
                f"{MAX_REFERENCE_CHARS} characters",
                None,
            )
        body = {**defaults, **fields}
        try:
            result: BaseModel | LeanResult | None = None
            if lean is not None:
                result = await lean(caller, body)
            if result is None:
                try:
                    request = model.model_validate(body)
                except ValidationError as exc:
                    return error_item(ErrorCode.INVALID, describe_validation_error(exc),
                                      reference)
                result = await call(caller, request)
        except ServiceError as exc:
            if is_unavailable(exc):
                raise  # not this item's outcome: the batch fails (503), a chunk is redone
            return error_item(exc.code, exc.message, reference)
        except Exception as exc:
            if is_unavailable(exc):
                raise
            # Type and traceback only; never the item.
            _log.exception("batch_item_failed", subject=single.value,
                           request_id=caller.request_id, tenant_id=caller.tenant_id)
            return error_item(ErrorCode.INTERNAL, None, reference)
        data = (result.json_data() if isinstance(result, LeanResult)
                else result.model_dump(mode="json"))
        return data_item(data, reference)
