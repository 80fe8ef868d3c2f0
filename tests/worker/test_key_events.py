"""Key events from the lifecycle service, the rotation scheduler and the policy subjects:
what is published and when, that a failed publish never fails a key operation, and that
the scheduler survives whatever it meets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from faststream.nats import TestNatsBroker
from nats.aio.client import Client
from structlog.testing import capture_logs

from pqkms.nats_embedded import start_nats_server
from schemas.algorithms import Algorithm, KeyStatus, Plan
from schemas.errors import ErrorCode
from schemas.events import (
    KEY_EVENTS_STREAM,
    SCHEDULER_REQUEST_ID,
    KeyEvent,
    KeyEventType,
    key_events_subject,
)
from schemas.keys import (
    ArchiveKeyRequest,
    GenerateKeyRequest,
    RetireKeyRequest,
    RotateKeyRequest,
)
from schemas.subjects import Subject
from worker.app import build_broker, build_services
from worker.config import Settings
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_access import KeyAccess
from worker.services.key_events import NatsKeyEventPublisher, ensure_key_events_stream
from worker.services.keys import KeyLifecycleService
from worker.services.rate_limit import InMemoryRateLimiter
from worker.services.rotation_scheduler import RotationScheduler
from worker.store import KeyStore, load_or_create_master_key
from worker.store.rotation_policies import DueKey, RotationPolicyStore

K = Algorithm.KYBER768


class RecordingEvents:
    """A publisher that keeps what it is given (or fails, when told to)."""

    def __init__(self) -> None:
        self.events: list[KeyEvent] = []
        self.fail = False

    async def publish(self, event: KeyEvent) -> None:
        if self.fail:
            raise ConnectionError("NATS is away")
        self.events.append(event)


@dataclasses.dataclass
class Harness:
    store: KeyStore
    events: RecordingEvents
    service: KeyLifecycleService
    policies: RotationPolicyStore
    settings: Settings

    async def caller(self, plan: Plan = Plan.ENTERPRISE) -> Caller:
        tenant, _ = await self.store.create_tenant(f"tenant-{secrets.token_hex(4)}", plan)
        return Caller(tenant_id=tenant.tenant_id, plan=tenant.plan, request_id="req-1")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(data_dir=tmp_path, free_max_versions=2)
    store = await KeyStore.open(settings.resolved_database_url(),
                                load_or_create_master_key(tmp_path / "master.key"))
    events = RecordingEvents()
    policies = RotationPolicyStore(store.engine)
    service = KeyLifecycleService(store, KeyAccess(store), settings, events, policies)
    yield Harness(store, events, service, policies, settings)
    await store.close()


async def test_concurrent_changes_of_one_version_are_announced_once(
    harness: Harness, tmp_path: Path
) -> None:
    # Two workers on one database: of their concurrent calls only the one whose
    # transaction changed the version announces it (they used to compare timestamps).
    other_store = await KeyStore.open(harness.settings.resolved_database_url(),
                                      load_or_create_master_key(tmp_path / "master.key"))
    try:
        other = KeyLifecycleService(other_store, KeyAccess(other_store), harness.settings,
                                    harness.events, RotationPolicyStore(other_store.engine))
        caller = await harness.caller()
        await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
        for round_number in range(1, 6):
            await harness.service.rotate(caller, RotateKeyRequest(algorithm=K))
            archive = ArchiveKeyRequest(algorithm=K, key_version=round_number)
            await asyncio.gather(*(
                service.archive(caller, archive)
                for service in (harness.service, other) * 4
            ))
    finally:
        await other_store.close()
    archived = [e.key_version for e in harness.events.events
                if e.type is KeyEventType.ARCHIVED]
    assert archived == [1, 2, 3, 4, 5]


def _kinds(events: list[KeyEvent]) -> list[tuple[KeyEventType, int, int | None]]:
    return [(e.type, e.key_version, e.old_key_version) for e in events]


async def test_every_change_is_announced_once_after_it_happens(harness: Harness) -> None:
    caller = await harness.caller()
    await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
    await harness.service.rotate(caller, RotateKeyRequest(algorithm=K))
    await harness.service.retire(caller, RetireKeyRequest(algorithm=K, key_version=1))
    await harness.service.archive(caller, ArchiveKeyRequest(algorithm=K, key_version=1))
    # Repeats that change nothing announce nothing.
    await harness.service.archive(caller, ArchiveKeyRequest(algorithm=K, key_version=1))
    await harness.service.rotate(caller, RotateKeyRequest(algorithm=K))
    await harness.service.retire(caller, RetireKeyRequest(algorithm=K, key_version=2))
    await harness.service.retire(caller, RetireKeyRequest(algorithm=K, key_version=2))

    # A rotation is announced twice: the new version rotated in, the old one retired
    # (so retiring it again later is not an event).
    assert _kinds(harness.events.events) == [
        (KeyEventType.GENERATED, 1, None),
        (KeyEventType.ROTATED, 2, 1),
        (KeyEventType.RETIRED, 1, None),
        (KeyEventType.ARCHIVED, 1, None),
        (KeyEventType.ROTATED, 3, 2),
        (KeyEventType.RETIRED, 2, None),
    ]
    event = harness.events.events[1]
    assert event.tenant_id == caller.tenant_id and event.algorithm is K
    assert event.request_id == "req-1" and event.schema_version == 1
    assert event.occurred_at.endswith("Z")
    assert len({e.event_id for e in harness.events.events}) == 6
    # Small and public: no key bytes of any kind.
    assert set(orjson.loads(event.model_dump_json())) == {
        "schema_version", "event_id", "type", "tenant_id", "algorithm", "key_version",
        "old_key_version", "occurred_at", "request_id",
    }


async def test_a_failed_operation_announces_nothing(harness: Harness) -> None:
    caller = await harness.caller()
    await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
    for attempt in (
        harness.service.generate(caller, GenerateKeyRequest(algorithm=K)),  # 409
        harness.service.retire(caller, RetireKeyRequest(algorithm=K, key_version=1)),  # active
        harness.service.archive(caller, ArchiveKeyRequest(algorithm=K, key_version=9)),  # 404
    ):
        with pytest.raises(ServiceError):
            await attempt
    assert _kinds(harness.events.events) == [(KeyEventType.GENERATED, 1, None)]


async def test_a_failed_publish_is_logged_and_the_operation_stands(harness: Harness) -> None:
    caller = await harness.caller()
    harness.events.fail = True
    with capture_logs() as logs:
        info = await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
        rotated = await harness.service.rotate(caller, RotateKeyRequest(algorithm=K))
    assert (info.key_version, rotated.key_version) == (1, 2)
    active = await harness.store.get_active_key(caller.tenant_id, K)
    assert active is not None and active.version == 2
    failures = [log for log in logs if log["event"] == "key_event_publish_failed"]
    assert [log["event_type"] for log in failures] == ["generated", "rotated", "retired"]
    assert failures[0]["reason"] == "ConnectionError"


async def test_scheduled_rotation_is_conditional_and_announced(harness: Harness) -> None:
    caller = await harness.caller()
    await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
    due = DueKey(caller.tenant_id, Plan.ENTERPRISE, K, 1, datetime.now(), 60)
    result = await harness.service.rotate_on_schedule(due)
    assert result is not None and (result.key_version, result.old_key_version) == (2, 1)
    # A second scheduler that found the same due version: nothing happens.
    assert await harness.service.rotate_on_schedule(due) is None
    assert [k.version for k in await harness.store.list_keys(caller.tenant_id, K)] == [1, 2]
    assert [(e.type, e.key_version, e.request_id) for e in harness.events.events[1:]] == [
        (KeyEventType.ROTATED, 2, SCHEDULER_REQUEST_ID),
        (KeyEventType.RETIRED, 1, SCHEDULER_REQUEST_ID),
    ]


async def test_scheduler_rotates_due_keys_once_per_period(harness: Harness) -> None:
    caller = await harness.caller()
    await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
    await harness.policies.set_policy(caller.tenant_id, K, 3600)
    first = await harness.store.get_active_key(caller.tenant_id, K)
    assert first is not None
    clock = [first.created_at]
    two = [RotationScheduler(harness.policies, harness.service, 1.0, clock=lambda: clock[0])
           for _ in range(2)]

    assert (await two[0].check_once()).due == 0
    clock[0] += timedelta(hours=1)  # exactly due; the next version is created after it
    summaries = await asyncio.gather(*(scheduler.check_once() for scheduler in two))
    assert sum(s.rotated for s in summaries) == 1
    assert sum(s.rotated + s.lost_race for s in summaries) <= 2
    # Still the same moment: the new version is fresh, nothing more is due.
    assert (await two[1].check_once()).due == 0
    keys = await harness.store.list_keys(caller.tenant_id, K)
    assert [(k.version, k.status) for k in keys] == [
        (1, KeyStatus.RETIRED), (2, KeyStatus.ACTIVE)
    ]


async def test_plan_cap_skips_with_one_warning(harness: Harness) -> None:
    caller = await harness.caller(Plan.FREE)  # at most 2 live versions in this harness
    await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
    await harness.service.rotate(caller, RotateKeyRequest(algorithm=K))
    await harness.policies.set_policy(caller.tenant_id, K, 60)
    later = datetime.now().astimezone() + timedelta(minutes=5)
    scheduler = RotationScheduler(harness.policies, harness.service, 1.0, clock=lambda: later)
    with capture_logs() as logs:
        first = await scheduler.check_once()
        second = await scheduler.check_once()
    assert (first.skipped, second.skipped, first.rotated) == (1, 1, 0)
    warnings = [log for log in logs if log["event"] == "scheduled_rotation_skipped"]
    assert len(warnings) == 1
    assert warnings[0]["code"] == ErrorCode.FORBIDDEN.value
    assert "Plan limit" in warnings[0]["reason"]
    assert [k.version for k in await harness.store.list_keys(caller.tenant_id, K)] == [1, 2]


class BrokenPolicies:
    """A policy store whose database is down."""

    def __init__(self) -> None:
        self.calls = 0
        self.third_call = asyncio.Event()

    async def due_keys(self, now: datetime | None = None) -> list[DueKey]:
        self.calls += 1
        if self.calls >= 3:
            self.third_call.set()
        raise OSError("database unreachable")


async def test_scheduler_survives_a_failing_database(harness: Harness) -> None:
    broken = BrokenPolicies()
    scheduler = RotationScheduler(broken, harness.service, 0.01)  # type: ignore[arg-type]
    with capture_logs() as logs:
        scheduler.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broken.third_call.wait(), timeout=20)
        await scheduler.stop()
    assert broken.calls >= 3
    failures = [log for log in logs if log["event"] == "rotation_check_failed"]
    assert failures and failures[0]["reason"] == "OSError"


async def test_one_failing_key_does_not_stop_the_others(harness: Harness) -> None:
    first, second = await harness.caller(), await harness.caller()
    for caller in (first, second):
        await harness.service.generate(caller, GenerateKeyRequest(algorithm=K))
        await harness.policies.set_policy(caller.tenant_id, K, 60)
    original = harness.service.rotate_on_schedule

    async def flaky(due: DueKey) -> Any:
        if due.tenant_id == first.tenant_id:
            raise RuntimeError("boom")
        return await original(due)

    harness.service.rotate_on_schedule = flaky  # type: ignore[method-assign]
    later = datetime.now().astimezone() + timedelta(minutes=5)
    scheduler = RotationScheduler(harness.policies, harness.service, 1.0, clock=lambda: later)
    summary = await scheduler.check_once()
    assert (summary.failed, summary.rotated) == (1, 1)


# -- the policy subjects, through the envelope handler -------------------------------------


@pytest.fixture
async def broker_and_key(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    # No audit trail: these tests are about the policy subjects, not the audit chain.
    settings = Settings(data_dir=tmp_path, rotation_min_period_seconds=3600, audit=False)
    store = await KeyStore.open(settings.resolved_database_url(),
                                load_or_create_master_key(tmp_path / "master.key"))
    _, api_key = await store.create_tenant("acme", Plan.PRO)
    services = build_services(settings, store, InMemoryRateLimiter())
    broker = build_broker(settings, services)
    async with TestNatsBroker(broker) as test_broker:
        yield test_broker, api_key
    services.runner.close()
    await store.close()


async def _request(broker: Any, subject: Subject, body: Any, api_key: str) -> dict[str, Any]:
    reply = await broker.request(orjson.dumps(body), subject.value,
                                 headers={"X-API-Key": api_key}, timeout=10)
    return orjson.loads(reply.body)  # type: ignore[no-any-return]


async def test_policy_subjects_set_get_clear(broker_and_key: tuple[Any, str]) -> None:
    broker, key = broker_and_key
    empty = await _request(broker, Subject.KEYS_ROTATION_POLICY_GET, {"algorithm": "Kyber768"}, key)
    assert empty["data"]["rotation_period"] is None
    generated = await _request(broker, Subject.KEYS_GENERATE, {"algorithm": "Kyber768"}, key)
    created_at = datetime.fromisoformat(generated["data"]["created_at"].replace("Z", "+00:00"))
    set_reply = await _request(broker, Subject.KEYS_ROTATION_POLICY_SET,
                               {"algorithm": "Kyber768", "rotation_period": "90d"}, key)
    assert set_reply["data"]["rotation_period"] == "90d"
    assert set_reply["data"]["rotation_period_seconds"] == 90 * 86_400
    next_at = datetime.fromisoformat(set_reply["data"]["next_rotation_at"].replace("Z", "+00:00"))
    assert abs((next_at - created_at) - timedelta(days=90)) < timedelta(seconds=1)
    got = await _request(broker, Subject.KEYS_ROTATION_POLICY_GET, {"algorithm": "Kyber768"}, key)
    assert got["data"]["rotation_period"] == "90d"
    cleared = await _request(broker, Subject.KEYS_ROTATION_POLICY_SET,
                             {"algorithm": "Kyber768", "rotation_period": None}, key)
    assert cleared["data"]["rotation_period"] is None
    got = await _request(broker, Subject.KEYS_ROTATION_POLICY_GET, {"algorithm": "Kyber768"}, key)
    assert got["data"]["rotation_period"] is None


@pytest.mark.parametrize(("period", "fragment"), [
    ("30m", "at least 1h"),          # under this deployment's minimum
    ("90", "followed by d, h, m or s"),
    ("1y", "followed by d, h, m or s"),
    (3600, "followed by d, h, m or s"),
    ("99999d", "between 1s and 3650d"),
])
async def test_policy_periods_are_validated(
    broker_and_key: tuple[Any, str], period: Any, fragment: str
) -> None:
    broker, key = broker_and_key
    reply = await _request(broker, Subject.KEYS_ROTATION_POLICY_SET,
                           {"algorithm": "Kyber768", "rotation_period": period}, key)
    assert reply["error"]["code"] == "ERR_INVALID_001"
    assert fragment in reply["error"]["message"]


async def test_policy_subjects_need_an_api_key(broker_and_key: tuple[Any, str]) -> None:
    broker, _ = broker_and_key
    reply = await broker.request(b'{"algorithm": "Kyber768"}',
                                 Subject.KEYS_ROTATION_POLICY_GET.value, timeout=10)
    assert orjson.loads(reply.body)["error"]["code"] == "ERR_AUTH_001"


# -- the NATS publisher on a real server ---------------------------------------------------


async def test_nats_publisher_reaches_subscribers_and_the_stream(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    client = await nats.connect(server.url)
    try:
        assert await ensure_key_events_stream(client, 3600) is True
        assert await ensure_key_events_stream(client, 7200) is True  # update, not fail
        info = await client.jetstream().stream_info(KEY_EVENTS_STREAM)
        assert info.config.max_age == 7200
        subscription = await client.subscribe(key_events_subject("tenant-a"))
        other = await client.subscribe(key_events_subject("tenant-b"))
        publisher = NatsKeyEventPublisher(lambda: client)
        event = KeyEvent(type=KeyEventType.GENERATED, tenant_id="tenant-a", algorithm=K,
                         key_version=1, occurred_at="2026-01-01T00:00:00.000Z",
                         request_id="r")
        await publisher.publish(event)
        await publisher.publish(event)  # the same event again: the stream keeps one
        message = await subscription.next_msg(timeout=5)
        assert KeyEvent.model_validate_json(message.data) == event
        with pytest.raises(nats.errors.TimeoutError):
            await other.next_msg(timeout=0.3)
        # A different event after the duplicate: once it is stored, so is all before it.
        await publisher.publish(event.model_copy(update={"event_id": "another"}))
        assert await _stream_messages_once_at_least(client, 2) == 2
    finally:
        await client.close()
        server.stop()


async def _stream_messages_once_at_least(client: Client, count: int) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        stored: int = (await client.jetstream().stream_info(KEY_EVENTS_STREAM)).state.messages
        if stored >= count or loop.time() > deadline:
            return stored
        await asyncio.sleep(0.05)


async def test_unattached_publisher_raises() -> None:
    event = KeyEvent(type=KeyEventType.GENERATED, tenant_id="t", algorithm=K, key_version=1,
                     occurred_at="2026-01-01T00:00:00.000Z", request_id="r")
    with pytest.raises(RuntimeError):
        await NatsKeyEventPublisher().publish(event)


@pytest.mark.parametrize("bad", ["", "a.b", "a*", ">", "a b"])
def test_tenant_id_must_be_one_subject_token(bad: str) -> None:
    with pytest.raises(ValueError):
        key_events_subject(bad)
