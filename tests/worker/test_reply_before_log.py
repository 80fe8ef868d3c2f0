"""The reply goes out before the request's metrics and log line (they do not delay it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from schemas.operations import operation_for
from schemas.subjects import Subject
from worker.config import Settings
from worker.handlers.direct import DirectResponder
from worker.handlers.envelope import EnvelopeHandler
from worker.services.auth import Authenticator
from worker.services.rate_limit import InMemoryRateLimiter
from worker.services.request_record import RequestRecord
from worker.store import KeyStore


@dataclass
class _Events:
    seen: list[str] = field(default_factory=list)


@dataclass
class _Metrics:
    events: _Events

    def observe(self, record: RequestRecord) -> None:
        self.events.seen.append(f"observed {record.outcome}")


@dataclass
class _Connection:
    events: _Events
    fail: bool = False
    replies: list[bytes] = field(default_factory=list)

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        if self.fail:
            raise ConnectionError("connection lost")
        self.events.seen.append("published")
        self.replies.append(body)


def _handler(tmp_path: Path, events: _Events) -> EnvelopeHandler:
    # No API key in the requests below: the authenticator answers 401 without its store.
    authenticator = Authenticator(cast(KeyStore, object()))
    return EnvelopeHandler(authenticator, InMemoryRateLimiter(),
                           Settings(data_dir=tmp_path, audit=False), metrics=_Metrics(events))


async def _unused_call(caller: Any, request: Any) -> Any:
    raise AssertionError("not reached without an API key")


def _message(subject: Subject) -> Msg:
    return Msg(cast(NatsClient, None), subject=subject.value, reply="_INBOX.reply",
               data=orjson.dumps({"plaintext": "aGk="}), headers={})


async def test_respond_leaves_metrics_and_log_to_finish(tmp_path: Path) -> None:
    events = _Events()
    handler = _handler(tmp_path, events)
    with capture_logs() as logs:
        (body, _), finish = await handler.respond(
            operation_for(Subject.KEM_ENCRYPT), _unused_call, b"{}", {})
        assert orjson.loads(body)["error"]["code"] == "ERR_AUTH_001"
        assert events.seen == [] and not [e for e in logs if e["event"] == "request"]
        finish()
    assert events.seen == ["observed ERR_AUTH_001"]
    assert [e["outcome"] for e in logs if e["event"] == "request"] == ["ERR_AUTH_001"]


async def test_direct_reply_is_published_before_the_metrics_and_log(tmp_path: Path) -> None:
    events = _Events()
    responder = DirectResponder(_handler(tmp_path, events), 8)
    responder.add(Subject.KEM_ENCRYPT, _unused_call)
    connection = _Connection(events)
    responder._connection = cast(NatsClient, connection)
    with capture_logs() as logs:
        await responder._answer(_message(Subject.KEM_ENCRYPT))
        assert events.seen == ["published"]  # nothing recorded yet: the reply came first
        await asyncio.sleep(0)
    assert events.seen == ["published", "observed ERR_AUTH_001"]
    assert [e["outcome"] for e in logs if e["event"] == "request"] == ["ERR_AUTH_001"]
    assert orjson.loads(connection.replies[0])["error"]["code"] == "ERR_AUTH_001"


async def test_a_reply_that_cannot_be_sent_is_still_recorded(tmp_path: Path) -> None:
    events = _Events()
    responder = DirectResponder(_handler(tmp_path, events), 8)
    responder.add(Subject.KEM_ENCRYPT, _unused_call)
    responder._connection = cast(NatsClient, _Connection(events, fail=True))
    with capture_logs() as logs:
        await responder._answer(_message(Subject.KEM_ENCRYPT))
        await asyncio.sleep(0)
    assert events.seen == ["observed ERR_AUTH_001"]
    assert [e["event"] for e in logs] == ["direct_reply_failed", "request"]
