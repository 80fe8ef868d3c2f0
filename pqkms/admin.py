"""Operator tasks on the key store: first-run setup, schema creation, tenants.

These run in the ``pqkms`` command (``up``, ``db init``, ``tenant create``), never in a
worker. The worker package is imported lazily so ``pqkms --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.algorithms import Plan
from worker.config import Settings

if TYPE_CHECKING:
    from worker.store import KeyStore, MasterKey

__all__ = [
    "CreatedTenant",
    "StoreInfo",
    "create_tenant",
    "database_errors",
    "database_url_with_password",
    "describe_database_failure",
    "initialise_store",
    "load_master_key",
    "open_store",
    "redacted_database_url",
]


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What :func:`initialise_store` set up; safe to print (no secrets)."""

    database_url: str
    master_key_file: Path | None
    kek_id: str


@dataclass(frozen=True, slots=True)
class CreatedTenant:
    """A new tenant and its first API key (shown once, never stored in clear)."""

    tenant_id: str
    name: str
    plan: str
    api_key: str

    def as_json_dict(self) -> dict[str, str]:
        """The object ``pqkms tenant create`` prints."""
        return {
            "tenant_id": self.tenant_id,
            "name": self.name,
            "plan": self.plan,
            "api_key": self.api_key,
        }


def redacted_database_url(url: str) -> str:
    """The database URL with any password masked, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL: say nothing about its content
        return "<database url>"


def database_url_with_password(url: str, password: str) -> str:
    """``url`` with its password set (escaped as URLs require)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=password).render_as_string(hide_password=False)


def describe_database_failure(settings: Settings, exc: BaseException) -> str:
    """One safe line for a database that cannot be reached or used (no password)."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0][:200] if detail else type(exc).__name__
    url = redacted_database_url(settings.resolved_database_url())
    return f"cannot use the database {url}: {reason}"


def database_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning the database is unreachable or refuses us."""
    from sqlalchemy.exc import SQLAlchemyError

    return (OSError, SQLAlchemyError)


def load_master_key(settings: Settings, *, create: bool) -> MasterKey:
    """The master key from ``PQKMS_MASTER_KEY`` (inline base64) or the key file.

    With ``create`` the file is created (mode 0600, directory 0700) when it does not
    exist yet; that is the first-run path of ``pqkms up`` and ``pqkms db init``.
    """
    from worker.store import load_or_create_master_key, master_key_from_base64

    if settings.master_key is not None:
        return master_key_from_base64(settings.master_key.get_secret_value())
    return load_or_create_master_key(settings.resolved_master_key_file(), create=create)


def _uses_default_sqlite(settings: Settings) -> bool:
    return not settings.database_url


async def open_store(
    settings: Settings, *, create_key: bool, create_schema: bool = True
) -> KeyStore:
    """Open the key store named by the settings (checks the master key's check value)."""
    from worker.store import KeyStore

    if _uses_default_sqlite(settings):
        _make_private_dir(settings.data_dir)
    master = load_master_key(settings, create=create_key)
    return await KeyStore.open(
        settings.resolved_database_url(), master, create_schema=create_schema
    )


async def initialise_store(settings: Settings) -> StoreInfo:
    """Create the data directory, master key and schema if missing; idempotent.

    Run once before any worker starts so that workers never race on schema creation or
    on recording the master key's check value.
    """
    store = await open_store(settings, create_key=True, create_schema=True)
    try:
        kek_id = store.kek_id
    finally:
        await store.close()
    key_file = None if settings.master_key is not None else settings.resolved_master_key_file()
    return StoreInfo(
        database_url=redacted_database_url(settings.resolved_database_url()),
        master_key_file=key_file,
        kek_id=kek_id,
    )


async def create_tenant(settings: Settings, name: str, plan: Plan) -> CreatedTenant:
    """Create a tenant and its first API key.

    On the default local layout (SQLite in the data directory) the master key and the
    schema are created when missing, so this works before the first ``pqkms up``. With
    an explicit database URL the master key must already exist: a fresh key would not
    match the database's and would only leave a useless file behind.
    """
    store = await open_store(settings, create_key=_uses_default_sqlite(settings))
    try:
        record, api_key = await store.create_tenant(name, plan)
    finally:
        await store.close()
    return CreatedTenant(
        tenant_id=record.tenant_id,
        name=record.name,
        plan=Plan(record.plan).value,
        api_key=api_key,
    )


def _make_private_dir(path: Path) -> None:
    """Create ``path`` as 0700 if it does not exist (an existing one is left alone)."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
