"""Reading what the client sent: the JSON body (size-limited) and route parameters.

The bridge checks only what it must to build a NATS request: that the body is a
JSON object within the size limit, and that no unknown parameter was given. The
fields themselves are the worker's to validate.
"""

from __future__ import annotations

from collections.abc import Collection

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import Message, Receive, Scope

from api_bridge.errors import BridgeError
from schemas.errors import ErrorCode

__all__ = [
    "InvalidAfterAuth", "query_fields", "read_json_object", "reject_query", "version_from_path",
]

_MAX_VERSION_DIGITS = 18  # fits a signed 64-bit integer, so orjson can serialise it
VERSION_MESSAGE = "Validation failed: key_version must be an integer >= 1"


def _invalid(message: str) -> BridgeError:
    return BridgeError(ErrorCode.INVALID, f"Validation failed: {message}")


class InvalidAfterAuth(Exception):
    """Query or path parameters that are invalid: a validation error, which the worker
    answers only after the API key and the rate limit (the order every request's checks
    follow), so the request still goes to a worker, without a body, carrying it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _invalid_parameter(message: str) -> InvalidAfterAuth:
    return InvalidAfterAuth(f"Validation failed: {message}")


async def read_json_object(receive: Receive, declared_length: str | bytes | None,
                           limit: int) -> bytes:
    """The raw body bytes from the ASGI ``receive``, after checking they hold one JSON
    object of at most ``limit`` bytes; ``declared_length``: the Content-Length header."""
    if (declared_length is not None and declared_length.isdigit()
            and int(declared_length) > limit):
        raise _too_large(limit)
    body = await _receive_body(receive, limit)
    if not body:
        raise _invalid("request body is required (a JSON object)")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(
            f"request body is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise _invalid("request body must be a JSON object")
    return body


async def _receive_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    first = _chunk(message)
    if len(first) > limit:
        raise _too_large(limit)
    if not message.get("more_body", False):
        return first  # the whole body in one message: the common case, no copy
    body = bytearray(first)
    while message.get("more_body", False):
        message = await receive()
        body += _chunk(message)
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _chunk(message: Message) -> bytes:
    if message["type"] != "http.request":  # http.disconnect
        raise _invalid("the client disconnected before the body was complete")
    chunk: bytes = message.get("body", b"")
    return chunk


def _too_large(limit: int) -> BridgeError:
    return _invalid(f"request body is larger than {limit} bytes")


def reject_query(scope: Scope) -> None:
    """Refuse any query parameter (POST routes take everything in the body)."""
    query = scope.get("query_string")
    if not query:
        return  # the common case, without parsing an empty query
    for name in QueryParams(query):
        raise _invalid_parameter(f"unknown query parameter '{_short(name)}'")


def query_fields(request: Request, allowed: Collection[str]) -> dict[str, str]:
    """The allowed query parameters that are present; unknown or repeated ones are refused."""
    fields: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise _invalid_parameter(f"unknown query parameter '{_short(name)}'")
        if name in fields:
            raise _invalid_parameter(f"query parameter '{name}' is given more than once")
        fields[name] = value
    return fields


def version_from_path(raw: str) -> int:
    """A key version from a path segment: ASCII digits only, else 400."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_VERSION_DIGITS):
        raise InvalidAfterAuth(VERSION_MESSAGE)
    return int(raw)


def _short(name: str, limit: int = 64) -> str:
    return name if len(name) <= limit else name[:limit] + "…"
