"""Errors the bridge answers itself, and the envelope answers that carry them
(``error_answer(...).response()`` where Starlette sends them)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from api_bridge.answer import JSON_MEDIA_TYPE, Answer
from schemas.envelope import error_envelope
from schemas.errors import ErrorCode
from schemas.subjects import HEADER_REQUEST_ID, HEADER_RETRY_AFTER

__all__ = [
    "JSON_MEDIA_TYPE",
    "BridgeError",
    "envelope_headers",
    "error_answer",
    "error_of",
]


class BridgeError(Exception):
    """A failure the bridge reports without a worker's help (bad input, bus down…).

    ``status`` overrides the registry's status only where HTTP itself decides it
    (405 for a wrong method); everything else takes the status from the registry.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.default_message
        self.status = status or code.http_status
        self.headers = dict(headers or {})
        super().__init__(self.message)


def envelope_headers(request_id: str) -> dict[str, str]:
    """Headers on every API response: the request id, and no caching of key material."""
    return {HEADER_REQUEST_ID: request_id, "Cache-Control": "no-store"}


def error_answer(
    code: ErrorCode,
    request_id: str,
    message: str | None = None,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    retry_after: int | None = None,
) -> Answer:
    """An error envelope to send, status from the registry unless overridden."""
    all_headers = envelope_headers(request_id)
    if headers:
        all_headers.update(headers)
    if retry_after is not None:
        all_headers[HEADER_RETRY_AFTER] = str(retry_after)
    body = orjson.dumps(error_envelope(code, request_id, message, retry_after))
    return Answer(status or code.http_status, all_headers, body)


def error_of(error: BridgeError, request_id: str) -> Answer:
    """What the client gets for ``error``."""
    return error_answer(error.code, request_id, error.message, status=error.status,
                        headers=error.headers)

