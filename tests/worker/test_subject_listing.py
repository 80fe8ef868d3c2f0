"""Subjects past nats-server's first page of a stream info (100 000) are counted too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
from nats.js.errors import NotFoundError

from worker.jobs.subject_listing import list_subjects


@dataclass
class Reply:
    data: bytes


class PagingServer:
    """Answers stream info requests as nats-server does, ``limit`` subjects a page."""

    def __init__(self, subjects: dict[str, int], limit: int) -> None:
        self.subjects = subjects
        self.limit = limit
        self.offsets: list[int] = []

    async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:
        assert subject == "$JS.API.STREAM.INFO.PQKMS_JOB_RESULTS"
        asked: dict[str, Any] = orjson.loads(payload)
        self.offsets.append(asked["offset"])
        names = sorted(self.subjects)[asked["offset"]:asked["offset"] + self.limit]
        return Reply(orjson.dumps({
            "state": {"subjects": {name: self.subjects[name] for name in names} or None},
            "total": len(self.subjects), "offset": asked["offset"], "limit": self.limit}))


async def test_every_page_is_asked_for() -> None:
    subjects = {f"pqkms.v1.jobs.results.t.j.r.{n}": 1 for n in range(250)}
    server = PagingServer(subjects, limit=100)
    assert await list_subjects(cast(Any, server), "PQKMS_JOB_RESULTS", "x.>") == subjects
    assert server.offsets == [0, 100, 200]


async def test_no_subject_is_one_request() -> None:
    server = PagingServer({}, limit=100)
    assert await list_subjects(cast(Any, server), "PQKMS_JOB_RESULTS", "x.>") == {}
    assert server.offsets == [0]


async def test_an_api_error_is_raised_as_stream_info_raises_it() -> None:
    class Missing:
        async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:
            return Reply(orjson.dumps({"error": {"code": 404, "err_code": 10059,
                                                 "description": "stream not found"}}))

    with pytest.raises(NotFoundError):
        await list_subjects(cast(Any, Missing()), "PQKMS_JOB_RESULTS", "x.>")
