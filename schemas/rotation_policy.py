"""Scheduled rotation: a period per tenant and algorithm, written like ``90d`` or ``12h``.

NATS only (no HTTP route): ``pqkms.v1.kms.keys.rotation-policy.set`` and ``.get``.
The smallest period a deployment accepts is a worker setting
(``PQKMS_ROTATION_MIN_PERIOD_SECONDS``), checked by the worker, not here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from schemas.algorithms import Algorithm
from schemas.fields import AnyAlgorithm

__all__ = [
    "MAX_ROTATION_PERIOD_SECONDS",
    "GetRotationPolicyRequest",
    "RotationPeriod",
    "RotationPolicyInfo",
    "SetRotationPolicyRequest",
    "format_rotation_period",
    "parse_rotation_period",
]

# Ten years: longer is no schedule at all, and it keeps the seconds in a 32-bit column.
MAX_ROTATION_PERIOD_SECONDS = 3650 * 86_400
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PERIOD = re.compile(r"([0-9]{1,10})([dhms])")
_PERIOD_HINT = "a whole number followed by d, h, m or s, e.g. 90d, 12h, 30m, 3600s"


def parse_rotation_period(text: str) -> int:
    """Seconds in a period such as ``90d``; ``ValueError`` with a readable reason."""
    match = _PERIOD.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a rotation period is {_PERIOD_HINT}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 1 <= seconds <= MAX_ROTATION_PERIOD_SECONDS:
        raise ValueError("a rotation period is between 1s and 3650d")
    return seconds


def format_rotation_period(seconds: int) -> str:
    """The shortest exact spelling: 7776000 → ``90d``, 5400 → ``90m``."""
    for unit, size in _UNIT_SECONDS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every whole number of seconds is exact")  # pragma: no cover


def _period_from_wire(value: Any) -> int:
    if not isinstance(value, str):
        raise PydanticCustomError("rotation_period", f"must be {_PERIOD_HINT}")
    try:
        return parse_rotation_period(value)
    except ValueError as exc:
        raise PydanticCustomError("rotation_period", str(exc)) from None


RotationPeriod = Annotated[
    int,
    BeforeValidator(_period_from_wire),
    PlainSerializer(format_rotation_period, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+[dhms]$", "examples": ["90d"]}),
]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class SetRotationPolicyRequest(BaseModel):
    """Rotate the algorithm's active version every ``rotation_period``; ``null`` clears."""

    model_config = _STRICT
    algorithm: AnyAlgorithm
    rotation_period: RotationPeriod | None = Field(
        description="e.g. 90d, 12h, 30m, 3600s; null removes the policy"
    )


class GetRotationPolicyRequest(BaseModel):
    """The rotation policy of one algorithm."""

    model_config = _STRICT
    algorithm: AnyAlgorithm


class RotationPolicyInfo(BaseModel):
    """A tenant's rotation policy for one algorithm; the period is ``null`` without one."""

    algorithm: Algorithm
    rotation_period: str | None = Field(description="e.g. 90d; null: no scheduled rotation")
    rotation_period_seconds: int | None
    next_rotation_at: str | None = Field(
        description="when the active version becomes due (null: no policy or no active key)"
    )
    updated_at: str | None
