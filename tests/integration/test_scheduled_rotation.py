"""Scheduled rotation and key events on a real stack: two workers, real NATS subscribers.

Each worker checks for due keys every second (``PQKMS_ROTATION_CHECK_SECONDS=1``) and the
deployment allows periods from one second (``PQKMS_ROTATION_MIN_PERIOD_SECONDS=1``), so a
2-second policy rotates within seconds. Both workers find the same due key; the
conditional rotate in the store lets exactly one of them rotate it. Subscribers of one
tenant's event subject see that tenant's events and nothing of any other tenant's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import text

from schemas.events import KeyEvent, KeyEventType, key_events_subject
from schemas.subjects import Subject
from tests.cli.processes import clean_env, run_pqkms
from tests.support.stack import (
    LocalStack,
    NatsCaller,
    PostgresUnavailable,
    temporary_postgres_database,
)
from worker.handlers.ordered_flush import send_pings_behind_queued_commands
from worker.store import KeyStore, create_engine_for, load_or_create_master_key

pytestmark = [pytest.mark.integration, pytest.mark.long]

KEM = "Kyber768"
PERIOD = timedelta(seconds=2)
WAIT_SECONDS = 90.0  # a deadline for a busy machine, never a measurement
SCHEDULER = "scheduler"
SCHEDULE_ENV = {"PQKMS_ROTATION_CHECK_SECONDS": "1", "PQKMS_ROTATION_MIN_PERIOD_SECONDS": "1"}


class EventLog:
    """Every key event received on one tenant's subject, in arrival order."""

    def __init__(self) -> None:
        self.events: list[KeyEvent] = []
        self._arrived = asyncio.Event()

    @classmethod
    async def subscribe(cls, client: Client, tenant_id: str) -> EventLog:
        log = cls()

        async def on_message(message: Msg) -> None:
            log.events.append(KeyEvent.model_validate_json(message.data))
            log._arrived.set()

        # (nats-py's own flush can return before nats-server has the SUB)
        send_pings_behind_queued_commands(client)
        await client.subscribe(key_events_subject(tenant_id), cb=on_message)
        await client.flush()  # subscribed before anything is published
        return log

    def of(self, kind: KeyEventType, request_id: str | None = None) -> list[KeyEvent]:
        return [e for e in self.events
                if e.type is kind and (request_id is None or e.request_id == request_id)]

    async def wait_until(self, done: Callable[[], bool], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"gave up waiting for {what}; got {self.events}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                continue


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def rotating_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    """nats-server and two workers that check for due keys every second."""
    async with AsyncExitStack() as resources:
        database_url = None
        if request.param == "postgres":
            try:
                database_url = await resources.enter_async_context(
                    temporary_postgres_database("pqkms_rotation"))
            except PostgresUnavailable as exc:
                pytest.skip(str(exc))
        root = Path(tmp_path_factory.mktemp(f"rotation-{request.param}"))
        local = LocalStack(root, database_url=database_url, extra_env=dict(SCHEDULE_ENV))
        resources.callback(local.stop)
        await local.start(workers=2)
        yield local


@pytest.fixture
async def client(rotating_stack: LocalStack) -> AsyncIterator[Client]:
    connection = await nats.connect(rotating_stack.nats_servers)
    yield connection
    await connection.close()


async def _tenant(stack: LocalStack, client: Client) -> tuple[NatsCaller, str, EventLog]:
    api_key = await stack.create_tenant()
    tenant_id = await stack.tenant_id(api_key)
    return NatsCaller(client, api_key), tenant_id, await EventLog.subscribe(client, tenant_id)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_scheduled_rotation_rotates_once_per_period_and_announces_it(
    rotating_stack: LocalStack, client: Client
) -> None:
    call, tenant_id, events = await _tenant(rotating_stack, client)
    _, other_id, others = await _tenant(rotating_stack, client)

    generated = await call(Subject.KEYS_GENERATE, {"algorithm": KEM},
                           headers={"X-Request-ID": "gen-1"})
    assert generated.code is None
    await events.wait_until(lambda: bool(events.of(KeyEventType.GENERATED)), "generated")
    first = events.of(KeyEventType.GENERATED)[0]
    assert (first.tenant_id, first.algorithm.value, first.key_version) == (tenant_id, KEM, 1)
    assert first.request_id == "gen-1" and first.old_key_version is None

    policy = await call(Subject.KEYS_ROTATION_POLICY_SET,
                        {"algorithm": KEM, "rotation_period": "2s"})
    assert policy.code is None and policy.data["rotation_period"] == "2s"
    await events.wait_until(lambda: len(events.of(KeyEventType.ROTATED, SCHEDULER)) >= 2,
                            "two scheduled rotations")
    cleared = await call(Subject.KEYS_ROTATION_POLICY_SET,
                         {"algorithm": KEM, "rotation_period": None})
    assert cleared.code is None and cleared.data["rotation_period"] is None

    # The versions: contiguous, one active, each one at least a period younger than the
    # one it replaced (two workers never rotated the same due version twice).
    listing = await call(Subject.KEYS_LIST, {"algorithm": KEM})
    keys = sorted(listing.data["keys"], key=lambda key: key["key_version"])
    last = len(keys)
    assert last >= 3
    assert [key["key_version"] for key in keys] == list(range(1, last + 1))
    assert [key["status"] for key in keys] == ["retired"] * (last - 1) + ["active"]
    for older, newer in itertools.pairwise(keys):
        assert _moment(newer["created_at"]) - _moment(older["created_at"]) >= PERIOD

    # Each scheduled rotation has its audit record, as a rotate request would.
    engine = create_engine_for(rotating_stack.db_url)
    try:
        async with engine.connect() as db:
            audited = sorted(version for (version,) in await db.execute(text(
                "SELECT key_version FROM pqkms_audit_record WHERE request_id = :request AND "
                "tenant_id = :tenant AND operation = :operation AND outcome = 'OK'"),
                {"request": SCHEDULER, "tenant": tenant_id,
                 "operation": Subject.KEYS_ROTATE.value}))
    finally:
        await engine.dispose()
    assert audited == list(range(2, last + 1))

    # The events: one rotated and one retired per new version, none twice.
    await events.wait_until(
        lambda: {e.key_version for e in events.of(KeyEventType.ROTATED)} >= set(range(2, last + 1)),
        "an event for every rotation")
    rotated = events.of(KeyEventType.ROTATED)
    assert sorted(e.key_version for e in rotated) == list(range(2, len(rotated) + 2))
    assert all(e.old_key_version == e.key_version - 1 for e in rotated)
    assert all(e.request_id == SCHEDULER for e in rotated)
    await events.wait_until(
        lambda: len(events.of(KeyEventType.RETIRED)) >= len(rotated), "retired events")
    retired = sorted(e.key_version for e in events.of(KeyEventType.RETIRED))
    assert retired == [e.old_key_version for e in sorted(rotated, key=lambda e: e.key_version)]

    # Archive over NATS is announced with the caller's request id; repeats are not.
    archived = await call(Subject.KEYS_ARCHIVE, {"algorithm": KEM, "key_version": 1},
                          headers={"X-Request-ID": "archive-1"})
    assert archived.code is None
    await events.wait_until(lambda: bool(events.of(KeyEventType.ARCHIVED)), "archived")
    assert [(e.key_version, e.request_id) for e in events.of(KeyEventType.ARCHIVED)] == [
        (1, "archive-1")
    ]
    again = await call(Subject.KEYS_RETIRE, {"algorithm": KEM, "key_version": 2})
    assert again.code is None  # already retired by the rotation: no new event

    # Isolation: the other tenant's subscriber saw nothing, and vice versa.
    assert others.events == []
    assert {e.tenant_id for e in events.events} == {tenant_id}
    assert other_id != tenant_id

    # A subscriber that was away catches up from the PQKMS_KEY_EVENTS stream.
    late = await client.jetstream().subscribe(key_events_subject(tenant_id),
                                              ordered_consumer=True)
    try:
        replayed = KeyEvent.model_validate_json((await late.next_msg(timeout=10)).data)
    finally:
        await late.unsubscribe()
    assert replayed == first


async def test_policy_from_the_cli_is_picked_up_by_the_workers(
    rotating_stack: LocalStack, client: Client
) -> None:
    call, tenant_id, events = await _tenant(rotating_stack, client)
    name = await _tenant_name(rotating_stack, tenant_id)
    assert (await call(Subject.KEYS_GENERATE, {"algorithm": KEM})).code is None
    env = clean_env(
        PQKMS_DATABASE_URL=rotating_stack.db_url,
        PQKMS_MASTER_KEY_FILE=str(rotating_stack.master_key_file),
        PQKMS_DATA_DIR=str(rotating_stack.root),
        **SCHEDULE_ENV,
    )

    def pqkms(*args: str) -> tuple[int, str, str]:
        result = run_pqkms("tenant", "rotation-policy", *args, env=env)
        return result.returncode, result.stdout, result.stderr

    code, out, err = await asyncio.to_thread(pqkms, "set", name, "--algorithm", KEM,
                                             "--period", "2s")
    assert code == 0, err
    assert json.loads(out)["rotation_period"] == "2s"
    await events.wait_until(lambda: bool(events.of(KeyEventType.ROTATED, SCHEDULER)),
                            "a rotation scheduled from the CLI")
    code, out, err = await asyncio.to_thread(pqkms, "show", name)
    assert code == 0, err
    assert [(p["algorithm"], p["rotation_period_seconds"]) for p in json.loads(out)] == [
        (KEM, 2)
    ]
    code, out, err = await asyncio.to_thread(pqkms, "clear", name, "--algorithm", KEM)
    assert code == 0 and json.loads(out)["cleared"] is True, err
    got = await call(Subject.KEYS_ROTATION_POLICY_GET, {"algorithm": KEM})
    assert got.data["rotation_period"] is None

    code, _, err = await asyncio.to_thread(pqkms, "show", "no-such-tenant")
    assert code == 1 and "no tenant named 'no-such-tenant'" in err
    code, _, err = await asyncio.to_thread(pqkms, "set", name, "--algorithm", KEM,
                                           "--period", "2 weeks")
    assert code == 2 and "followed by d, h, m or s" in err


async def _tenant_name(stack: LocalStack, tenant_id: str) -> str:
    master = load_or_create_master_key(stack.master_key_file, create=False)
    store = await KeyStore.open(stack.db_url, master, create_schema=False)
    try:
        tenant = await store.get_tenant(tenant_id)
    finally:
        await store.close()
    assert tenant is not None
    return tenant.name
