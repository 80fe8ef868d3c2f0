"""The JSON envelope every reply travels in, over NATS and over HTTP alike."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ErrorCode

__all__ = [
    "ErrorBody",
    "ErrorEnvelope",
    "SuccessEnvelope",
    "error_envelope",
    "is_sane_request_id",
    "new_request_id",
    "success_envelope",
    "utc_timestamp",
]


class ErrorBody(BaseModel):
    """The ``error`` object: the code twice (REST reference and SDK field) and a message."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Error code, e.g. ERR_KEM_005")
    error_code: str = Field(description="Same as code; the field the qpher SDKs read")
    message: str = Field(description="Human-readable, safe to show")
    retry_after: int | None = Field(
        default=None, description="Seconds to wait before retrying (ERR_RATE_001 only)"
    )


class SuccessEnvelope(BaseModel):
    """``{"data": ..., "request_id": ..., "timestamp": ...}``."""

    data: dict[str, Any]
    request_id: str
    timestamp: str


class ErrorEnvelope(BaseModel):
    """``{"error": {...}, "request_id": ..., "timestamp": ...}``."""

    error: ErrorBody
    request_id: str
    timestamp: str


# (whole second, its "YYYY-MM-DDTHH:MM:SS." text): every reply carries a timestamp, and
# formatting the same second over and over is most of its cost.
_second_text: tuple[int, str] = (-1, "")
# Version 4 and the RFC 4122 variant, set on 128 random bits.
_MAX_REQUEST_ID_LENGTH = 128
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``: ``2026-02-15T10:30:00.123Z``."""
    global _second_text
    if moment is not None:
        utc = moment.astimezone(UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    now = time.time()
    second = int(now)
    cached_second, prefix = _second_text
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second_text = (second, prefix)
    return f"{prefix}{int((now - second) * 1000):03d}Z"


def is_sane_request_id(value: str) -> bool:
    """1-128 visible ASCII characters: safe in an HTTP header, a NATS header and a log.
    The bridge and the workers both replace any other caller-given id with a fresh one."""
    # Printable ASCII is " " to "~"; without the space, "!" to "~" (str methods: no loop).
    return (0 < len(value) <= _MAX_REQUEST_ID_LENGTH and value.isascii()
            and value.isprintable() and " " not in value)


def new_request_id() -> str:
    """A fresh request id in UUID4 form, used when the caller sent none.

    It only has to be unique, not unpredictable: ``random`` (reseeded in every process,
    also after a fork) spares the ``os.urandom`` system call of :func:`uuid.uuid4`.
    """
    value = f"{(random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


def success_envelope(data: dict[str, Any] | orjson.Fragment, request_id: str) -> dict[str, Any]:
    """The success envelope as a plain dict, ready for JSON (``data`` may be JSON already
    serialized, as an ``orjson.Fragment``)."""
    return {"data": data, "request_id": request_id, "timestamp": utc_timestamp()}


def error_envelope(
    code: ErrorCode, request_id: str, message: str | None = None, retry_after: int | None = None
) -> dict[str, Any]:
    """The error envelope as a plain dict, ready for JSON."""
    error: dict[str, Any] = {
        "code": code.value,
        "error_code": code.value,
        "message": message or code.default_message,
    }
    if retry_after is not None:
        error["retry_after"] = retry_after
    return {"error": error, "request_id": request_id, "timestamp": utc_timestamp()}
