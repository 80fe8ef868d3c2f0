"""The one place where requests become envelopes and errors become error envelopes.

Order per request: JSON body → API key → rate limit (an operation may count several
tokens, e.g. one per batch item) → validation → service. NATS or JetStream briefly
away (a failover) becomes ``ERR_SERVICE_001`` (503, retry); any other exception that is
not a ``ServiceError`` becomes ``ERR_INTERNAL_001`` with a generic message and a log
line; nothing from it reaches the wire.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import unquote

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from schemas.algorithms import Plan
from schemas.envelope import (
    error_envelope,
    is_sane_request_id,
    new_request_id,
    success_envelope,
)
from schemas.errors import ErrorCode
from schemas.nats_message import counted_size
from schemas.operations import Operation
from schemas.subjects import (
    HEADER_API_KEY,
    HEADER_INPUT_ERROR,
    HEADER_REQUEST_ID,
    HEADER_RETRY_AFTER,
)
from schemas.validation import describe_validation_error
from worker.audit.unauthenticated import UnauthenticatedAuditBudget
from worker.config import Settings
from worker.errors import RateLimited, ServiceError
from worker.services.auth import Authenticator
from worker.services.batch_items import BatchOutcome
from worker.services.context import Caller
from worker.services.rate_limit import RateLimiter
from worker.services.request_record import (
    NO_AUDIT,
    NO_METRICS,
    AuditSink,
    RequestMetrics,
    RequestRecord,
)
from worker.services.transient import unavailable_message
from worker.store.write_deadline import end_write_deadline, start_write_deadline

__all__ = [
    "EnvelopeHandler", "JsonResult", "LeanCall", "Reply", "ServiceCall", "header_value",
]


class JsonResult(Protocol):
    """A service result already in its JSON form (a batch's plain dicts; a job chunk's
    stored results, as the serialized JSON they are kept in)."""

    def json_data(self) -> dict[str, Any] | orjson.Fragment:
        """The reply's ``data`` object."""
        ...


ServiceCall = Callable[[Caller, Any], Awaitable[BaseModel | JsonResult]]
# The same operation on the raw body, for bodies in their common form; ``None``: the body
# goes through the request model and ``ServiceCall`` (worker.services.kem_items).
LeanCall = Callable[[Caller, dict[str, Any]], Awaitable[JsonResult | None]]
Reply = tuple[bytes, dict[str, str]]

_log = structlog.get_logger("pqkms.worker")
_MAX_INPUT_ERROR = 512
# Room a reply's headers take at most (request id, Retry-After): a shorter body fits.
_REPLY_HEADER_ROOM = 1024
_NO_FIELDS: Mapping[str, int] = {}
_AUDIT_FAILING_MESSAGE = (
    "The audit trail cannot be written at the moment, so this change was not made; retry "
    "later"
)


def header_value(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by case-insensitive name."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _request_id(headers: Mapping[str, str] | None) -> str:
    given = header_value(headers, HEADER_REQUEST_ID)
    if given and is_sane_request_id(given):  # as the bridge takes them
        return given
    return new_request_id()


def _decode_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise ServiceError(
            ErrorCode.INVALID, "Validation failed: body must be valid JSON"
        ) from None
    if not isinstance(body, dict):
        raise ServiceError(ErrorCode.INVALID, "Validation failed: body must be a JSON object")
    return body


def _input_error(encoded: str) -> ServiceError:
    """The 400 for parameters the bridge found invalid (``HEADER_INPUT_ERROR``); the
    text goes back only to the one who sent it, printable and bounded all the same."""
    message = unquote(encoded)[:_MAX_INPUT_ERROR]
    if not message.isprintable():
        message = "Validation failed: invalid query or path parameters"
    return ServiceError(ErrorCode.INVALID, message)


def _field(request: BaseModel | None, result: object, name: str) -> Any:
    """``name`` from the validated request, else from the result, else ``None``."""
    for model in (request, result):
        value = getattr(model, name, None)
        if value is not None:
            return value.value if hasattr(value, "value") else value
    return None


def _with_outcome(record: RequestRecord, outcome: str) -> RequestRecord:
    # A failed reply carries no item results: none of its items is counted as failed.
    return dataclasses.replace(record, outcome=outcome, item_errors=())


class EnvelopeHandler:
    """Turns one raw request into one reply envelope, whatever happens."""

    def __init__(
        self,
        authenticator: Authenticator,
        rate_limiter: RateLimiter,
        settings: Settings,
        audit: AuditSink = NO_AUDIT,
        metrics: RequestMetrics = NO_METRICS,
    ) -> None:
        self._auth = authenticator
        self._rate_limiter = rate_limiter
        self._settings = settings
        self._audit = audit
        self._metrics = metrics
        # Settings are read once per process: each plan's caps are fixed for its life.
        self._limits = {plan: settings.limits_for(plan) for plan in Plan}
        self._reply_limit = settings.nats_max_payload()
        # A reply body up to this long fits with any headers it gets.
        self._reply_room = self._reply_limit - _REPLY_HEADER_ROOM
        rate = settings.audit_unauthenticated_per_second
        self.unauthenticated_audit = UnauthenticatedAuditBudget(rate, math.ceil(rate * 5))

    def fit_replies_to(self, server_max_payload: int) -> None:
        """Keep every reply within the server's ``max_payload`` (headers included) when
        it is under the configured limit: a larger reply would be refused by nats-py,
        or, within its headers' size of the limit, cost the connection."""
        self._reply_limit = min(self._reply_limit, server_max_payload)
        self._reply_room = self._reply_limit - _REPLY_HEADER_ROOM

    def _check_fits(self, encoded: bytes, headers: Mapping[str, str]) -> None:
        size = counted_size(encoded, headers)
        if size > self._reply_limit:
            raise ServiceError(
                ErrorCode.INVALID,
                f"Validation failed: the reply would be {size} bytes, over the "
                f"{self._reply_limit}-byte limit of one message on the message bus; "
                "ask for less in one request (less data, fewer items, or a key list narrowed "
                "by status)",
            )

    async def respond(
        self,
        operation: Operation,
        call: ServiceCall,
        raw_body: bytes,
        headers: Mapping[str, str] | None,
        lean: LeanCall | None = None,
    ) -> tuple[Reply, Callable[[], None]]:
        """Process one request; never raises. Returns the reply and ``finish``, which
        records the request's metrics and log line: a caller may send the reply first
        and call it after, so that neither delays the answer."""
        started = time.perf_counter()
        request_id = _request_id(headers)
        reply_headers = {HEADER_REQUEST_ID: request_id}
        tenant_id: str | None = None
        code = "OK"
        cost = 1
        request: BaseModel | None = None
        result: BaseModel | JsonResult | None = None
        refused = False  # a change refused up front: its reply says nothing changed
        encoded: bytes | None = None  # the success envelope, once it is known to fit
        deadline = (start_write_deadline(self._settings.request_timeout_seconds, started)
                    if operation.changes_state else None)
        try:
            body = _decode_body(raw_body)
            caller = await self._auth.authenticate(
                header_value(headers, HEADER_API_KEY), request_id
            )
            tenant_id = caller.tenant_id
            limits = self._limits[caller.plan]
            cost = operation.cost(body) if operation.cost else 1
            if limits.burst is not None and cost > limits.burst:
                # All or nothing: a request the bucket can never hold is not a 429.
                raise ServiceError(
                    ErrorCode.INVALID,
                    f"Validation failed: this request counts {cost} items against the rate "
                    f"limit, over the plan's burst of {limits.burst}; send at most "
                    f"{limits.burst} items per request",
                )
            if operation.changes_state and self._audit.failing():
                refused = True  # (before the rate limit: a refusal takes no token)
                raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE, _AUDIT_FAILING_MESSAGE)
            if limits.rate_per_second is not None and limits.burst is not None:
                await self._rate_limiter.acquire(caller.tenant_id, limits, cost)
            if headers is not None and HEADER_INPUT_ERROR in headers:
                raise _input_error(headers[HEADER_INPUT_ERROR])
            if lean is not None:
                result = await lean(caller, body)
            if result is None:
                try:
                    request = operation.request.model_validate(body)
                except ValidationError as exc:
                    raise ServiceError(ErrorCode.INVALID, describe_validation_error(exc)) from None
                result = await call(caller, request)
            data = (result.model_dump(mode="json") if isinstance(result, BaseModel)
                    else result.json_data())
            envelope = success_envelope(data, request_id)
            encoded = orjson.dumps(envelope)
            if len(encoded) > self._reply_room:
                self._check_fits(encoded, reply_headers)
        except RateLimited as exc:
            code = exc.code.value
            reply_headers[HEADER_RETRY_AFTER] = str(exc.retry_after)
            envelope = error_envelope(exc.code, request_id, exc.message, exc.retry_after)
        except ServiceError as exc:
            code = exc.code.value
            envelope = error_envelope(exc.code, request_id, exc.message)
        except Exception as exc:
            # Log the type and traceback, never the request body or key material.
            unavailable = unavailable_message(exc)
            if unavailable is not None:
                code = ErrorCode.SERVICE_UNAVAILABLE.value
                _log.warning("request_unavailable", subject=operation.subject.value,
                             request_id=request_id, tenant_id=tenant_id,
                             reason=type(exc).__name__)
                envelope = error_envelope(ErrorCode.SERVICE_UNAVAILABLE, request_id,
                                          unavailable)
            else:
                code = ErrorCode.INTERNAL.value
                _log.exception("request_failed", subject=operation.subject.value,
                               request_id=request_id, tenant_id=tenant_id)
                envelope = error_envelope(ErrorCode.INTERNAL, request_id)
        if deadline is not None:
            end_write_deadline(deadline)
        # A batch's failed items, known from its one pass over the results (batch.py);
        # only when its reply carries them (a reply too large to send is a 400).
        item_errors = (result.error_codes if code == "OK" and type(result) is BatchOutcome
                       else ())
        record = RequestRecord(
            operation=operation.subject.value,
            request_id=request_id,
            tenant_id=tenant_id,
            algorithm=_field(request, result, "algorithm"),
            key_version=_field(request, result, "key_version"),
            outcome=code,
            duration_seconds=time.perf_counter() - started,
            items=cost,
            item_errors=item_errors,
        )
        try:
            if tenant_id is not None or self.unauthenticated_audit.take():
                await self._audit.append(record)
        except Exception:
            # No audit record, no answer: the operation is reported as failed.
            code = ErrorCode.SERVICE_UNAVAILABLE.value
            _log.exception("audit_write_failed", subject=operation.subject.value,
                           request_id=request_id, tenant_id=tenant_id)
            if not refused:
                envelope = error_envelope(
                    ErrorCode.SERVICE_UNAVAILABLE, request_id,
                    "The audit record of this request could not be written, so the "
                    "request is reported as failed; retry later",
                )
            reply_headers.pop(HEADER_RETRY_AFTER, None)
        observed = record if code == record.outcome else _with_outcome(record, code)
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        # Batch lines say how many items failed: the outcome is the envelope's, and a
        # batch whose every item failed is still OK (docs/audit.md).
        batch_fields = (_NO_FIELDS if operation.cost is None
                        else {"items_failed": observed.items_failed})

        def finish() -> None:
            self._metrics.observe(observed)
            _log.info(
                "request",
                subject=operation.subject.value,
                request_id=request_id,
                tenant_id=tenant_id,
                outcome=code,
                duration_ms=duration_ms,
                **batch_fields,
            )

        reply = encoded if encoded is not None and code == "OK" else orjson.dumps(envelope)
        return (reply, reply_headers), finish
