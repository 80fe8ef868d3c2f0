"""Fixtures for the key-store tests: one backend per parameter, SQLite always, PostgreSQL
when the server named by ``PQKMS_TEST_POSTGRES_URL`` answers (each test in its own schema).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from schemas.algorithms import Plan
from tests.support.audit_fakes import FakeStream
from worker.store import KeyStore, MasterKey, NewKeyMaterial, TenantRecord
from worker.store.audit_log import AuditLog

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@dataclass
class Backend:
    """Where a test's database lives and how to open a KeyStore on it."""

    name: str
    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    sqlite_path: Path | None = None

    async def open(self, master_key: MasterKey, *, create_schema: bool = True) -> KeyStore:
        """A KeyStore on this database."""
        return await KeyStore.open(
            self.url, master_key, create_schema=create_schema, connect_args=self.connect_args
        )


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _probe_postgres() -> tuple[str | None, str]:
    """A working SQLAlchemy URL (user ``postgres``, else ``root``) or ``None`` and why not."""
    base = os.environ.get("PQKMS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    candidates = [base]
    parsed = make_url(base)
    if "PQKMS_TEST_POSTGRES_URL" not in os.environ and parsed.username != "root":
        candidates.append(parsed.set(username="root").render_as_string(hide_password=False))
    errors = []
    for url in candidates:
        try:
            conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
        except Exception as exc:
            errors.append(f"{make_url(url).render_as_string()}: {exc!r}")
            continue
        await conn.close()
        return url, ""
    return None, "PostgreSQL not reachable (" + "; ".join(errors) + ")"


_postgres_probe: tuple[str | None, str] | None = None


async def postgres_url_or_skip() -> str:
    """The PostgreSQL URL for tests, or skip the test with the reason."""
    global _postgres_probe
    if _postgres_probe is None:
        _postgres_probe = await _probe_postgres()
    url, reason = _postgres_probe
    if url is None:
        pytest.skip(reason)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """An empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "data" / "pqkms.db"
        yield Backend("sqlite", f"sqlite+aiosqlite:///{path}", sqlite_path=path)
        return

    url = await postgres_url_or_skip()
    schema = f"pqkms_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield Backend("postgres", url, {"server_settings": {"search_path": schema}})
    finally:
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
def master_key() -> MasterKey:
    """A fresh random master key."""
    return MasterKey(secrets.token_bytes(32))


@pytest.fixture
async def store(backend: Backend, master_key: MasterKey) -> AsyncIterator[KeyStore]:
    """An opened KeyStore on the backend's database."""
    key_store = await backend.open(master_key)
    try:
        yield key_store
    finally:
        await key_store.close()


@pytest.fixture
async def tenant(store: KeyStore) -> TenantRecord:
    """A tenant on the free plan."""
    record, _ = await store.create_tenant(f"tenant-{secrets.token_hex(4)}", Plan.FREE)
    return record


def _random_material() -> NewKeyMaterial:
    return NewKeyMaterial(seed=secrets.token_bytes(64), public_key=secrets.token_bytes(1184))


@pytest.fixture
def new_material() -> Callable[[], NewKeyMaterial]:
    """A factory of random stand-in key material (the store does not interpret it)."""
    return _random_material


@pytest.fixture
async def log(store: KeyStore) -> AsyncIterator[AuditLog]:
    """The audit log on the store's database."""
    audit_log = AuditLog(store.engine)
    try:
        yield audit_log
    finally:
        await audit_log.close()


@pytest.fixture
def stream() -> FakeStream:
    """A stand-in for the audit stream."""
    return FakeStream()
