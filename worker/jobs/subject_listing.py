"""Every subject of a stream under a filter, with its message count, page by page.

nats-server answers a stream info request with at most 100 000 subjects, and nats-py's
``stream_info`` asks for the first page only: a job of more chunks than that would be
counted short (``status`` stuck at 100 000 chunks done). The request's ``offset`` asks
for the next page.
"""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.errors import APIError

__all__ = ["list_subjects"]

_API_PREFIX = "$JS.API"
_TIMEOUT_SECONDS = 10.0


async def list_subjects(connection: Client, stream: str, subjects_filter: str) -> dict[str, int]:
    """Subject → messages on it, for every subject of ``stream`` that ``subjects_filter``
    matches; raises nats-py's ``APIError`` subclasses as ``stream_info`` does."""
    subjects: dict[str, int] = {}
    while True:
        request = {"subjects_filter": subjects_filter, "offset": len(subjects)}
        reply = await connection.request(f"{_API_PREFIX}.STREAM.INFO.{stream}",
                                         orjson.dumps(request), timeout=_TIMEOUT_SECONDS)
        info: dict[str, Any] = orjson.loads(reply.data)
        if "error" in info:
            APIError.from_error(info["error"])
        page: dict[str, int] = (info.get("state") or {}).get("subjects") or {}
        before = len(subjects)
        subjects.update(page)
        total = int(info.get("total", 0))
        if not page or len(subjects) == before or len(subjects) >= total:
            return subjects
