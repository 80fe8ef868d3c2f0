"""A worker's reply → the HTTP answer: body unchanged, status from the registry."""

from __future__ import annotations

from typing import Any

import orjson

from api_bridge.answer import Answer
from api_bridge.errors import BridgeError, envelope_headers
from api_bridge.nats_gateway import Reply
from api_bridge.request_context import RequestContext, is_sane_request_id
from schemas.errors import ErrorCode, http_status_for
from schemas.subjects import HEADER_RETRY_AFTER
from worker.log_throttle import ThrottledWarning

__all__ = ["INVALID_REPLY_WARNING", "answer_from_reply"]

_DEFAULT_RETRY_AFTER = 1
_MAX_RETRY_AFTER = 86_400
_BAD_REPLY = "A worker sent a reply that is not a valid envelope"
INVALID_REPLY_WARNING = ThrottledWarning("api_bridge", "worker_reply_invalid")


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _check_envelope(envelope: Any) -> dict[str, Any] | None:
    """The error object (or None for success); raises 502 when the shape is wrong."""
    if (
        not isinstance(envelope, dict)
        or not _is_text(envelope.get("request_id"))
        or not is_sane_request_id(envelope["request_id"])
        or not _is_text(envelope.get("timestamp"))
        or ("data" in envelope) == ("error" in envelope)
    ):
        raise BridgeError(ErrorCode.BAD_GATEWAY, _BAD_REPLY)
    if "data" in envelope:
        if not isinstance(envelope["data"], dict):
            raise BridgeError(ErrorCode.BAD_GATEWAY, _BAD_REPLY)
        return None
    error = envelope["error"]
    if not (
        isinstance(error, dict)
        and _is_text(error.get("code"))
        and _is_text(error.get("error_code"))
        and _is_text(error.get("message"))
    ):
        raise BridgeError(ErrorCode.BAD_GATEWAY, _BAD_REPLY)
    return error


def _retry_after(reply: Reply, error: dict[str, Any]) -> str:
    """Whole seconds from the reply header, else the error's retry_after, else 1."""
    candidates: list[Any] = [reply.header(HEADER_RETRY_AFTER), error.get("retry_after")]
    for candidate in candidates:
        if isinstance(candidate, bool):
            continue
        if isinstance(candidate, int) or (isinstance(candidate, str) and candidate.isdigit()):
            return str(min(max(int(candidate), 0), _MAX_RETRY_AFTER))
    return str(_DEFAULT_RETRY_AFTER)


def answer_from_reply(reply: Reply, success_status: int, context: RequestContext) -> Answer:
    """Pass the worker's envelope bytes through with the right status and headers.

    Raises :class:`BridgeError` (502 ``ERR_BAD_GATEWAY_001``) for a reply that is
    not a JSON envelope.
    """
    try:
        envelope = orjson.loads(reply.body)
        error = _check_envelope(envelope)
    except (orjson.JSONDecodeError, BridgeError):
        # A worker of another version, or something else answering in the queue group
        # (a bus without accounts lets any client join it): worth an operator's look.
        # Never the bytes themselves; one line a second however many come.
        INVALID_REPLY_WARNING.note(reply_bytes=len(reply.body))
        raise BridgeError(ErrorCode.BAD_GATEWAY, _BAD_REPLY) from None
    request_id = envelope["request_id"]
    context.request_id = request_id
    headers = envelope_headers(request_id)
    if error is None:
        status = success_status
    else:
        context.error_code = error["code"]
        status = http_status_for(error["code"])
        if status == 429:
            headers[HEADER_RETRY_AFTER] = _retry_after(reply, error)
    return Answer(status, headers, reply.body)
