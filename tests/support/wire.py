"""Small helpers the integration tests share: base64 and key generation over NATS."""

from __future__ import annotations

import base64
from typing import Any

from schemas.subjects import Subject
from tests.support.stack import NatsCaller

__all__ = ["b64", "generate", "unb64"]


def b64(raw: bytes) -> str:
    """Standard base64, as every binary field on the wire."""
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    """Strict base64 decoding."""
    return base64.b64decode(text, validate=True)


async def generate(call: NatsCaller, algorithm: str) -> dict[str, Any]:
    """Generate the first key version of ``algorithm``; its data."""
    reply = await call(Subject.KEYS_GENERATE, {"algorithm": algorithm})
    assert reply.code is None, reply.body
    return reply.data  # type: ignore[no-any-return]
