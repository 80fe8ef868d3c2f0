"""The one place where requests become envelopes and errors become error envelopes.

Order per request: JSON body → API key → rate limit (an operation may count several
tokens, e.g. one per batch item) → validation → service. Any
exception that is not a ``ServiceError`` becomes ``ERR_INTERNAL_001`` with a generic
message and a log line; nothing from it reaches the wire.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from schemas.envelope import error_envelope, new_request_id, success_envelope
from schemas.errors import ErrorCode
from schemas.operations import Operation
from schemas.subjects import HEADER_API_KEY, HEADER_REQUEST_ID, HEADER_RETRY_AFTER
from schemas.validation import describe_validation_error
from worker.config import Settings
from worker.errors import RateLimited, ServiceError
from worker.services.auth import Authenticator
from worker.services.context import Caller
from worker.services.rate_limit import RateLimiter

__all__ = ["EnvelopeHandler", "Reply", "ServiceCall", "header_value"]

ServiceCall = Callable[[Caller, Any], Awaitable[BaseModel]]
Reply = tuple[bytes, dict[str, str]]

_log = structlog.get_logger("pqkms.worker")
_MAX_REQUEST_ID = 128


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
    if given and len(given) <= _MAX_REQUEST_ID and given.isprintable():
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


class EnvelopeHandler:
    """Turns one raw request into one reply envelope, whatever happens."""

    def __init__(
        self, authenticator: Authenticator, rate_limiter: RateLimiter, settings: Settings
    ) -> None:
        self._auth = authenticator
        self._rate_limiter = rate_limiter
        self._settings = settings

    async def handle(
        self,
        operation: Operation,
        call: ServiceCall,
        raw_body: bytes,
        headers: Mapping[str, str] | None,
    ) -> Reply:
        """Process one request; never raises."""
        started = time.perf_counter()
        request_id = _request_id(headers)
        reply_headers = {HEADER_REQUEST_ID: request_id}
        tenant_id: str | None = None
        code = "OK"
        try:
            body = _decode_body(raw_body)
            caller = await self._auth.authenticate(
                header_value(headers, HEADER_API_KEY), request_id
            )
            tenant_id = caller.tenant_id
            limits = self._settings.limits_for(caller.plan)
            cost = operation.cost(body) if operation.cost else 1
            if limits.burst is not None and cost > limits.burst:
                # All or nothing: a request the bucket can never hold is not a 429.
                raise ServiceError(
                    ErrorCode.INVALID,
                    f"Validation failed: this request counts {cost} items against the rate "
                    f"limit, over the plan's burst of {limits.burst}; send at most "
                    f"{limits.burst} items per request",
                )
            await self._rate_limiter.acquire(caller.tenant_id, limits, cost)
            try:
                request = operation.request.model_validate(body)
            except ValidationError as exc:
                raise ServiceError(ErrorCode.INVALID, describe_validation_error(exc)) from None
            result = await call(caller, request)
            envelope = success_envelope(result.model_dump(mode="json"), request_id)
        except RateLimited as exc:
            code = exc.code.value
            reply_headers[HEADER_RETRY_AFTER] = str(exc.retry_after)
            envelope = error_envelope(exc.code, request_id, exc.message, exc.retry_after)
        except ServiceError as exc:
            code = exc.code.value
            envelope = error_envelope(exc.code, request_id, exc.message)
        except Exception:
            code = ErrorCode.INTERNAL.value
            # Log the type and traceback, never the request body or key material.
            _log.exception("request_failed", subject=operation.subject.value,
                           request_id=request_id, tenant_id=tenant_id)
            envelope = error_envelope(ErrorCode.INTERNAL, request_id)
        _log.info(
            "request",
            subject=operation.subject.value,
            request_id=request_id,
            tenant_id=tenant_id,
            outcome=code,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return orjson.dumps(envelope), reply_headers
