"""SQLModel tables of the key store. Every row carries a ``schema_version`` from day one.

Datetimes are timezone-aware UTC going in and coming out; SQLite stores them naive, so
:class:`UTCDateTime` normalises on the way back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import uuid4

from sqlalchemy import BigInteger, DateTime, Dialect, Index, UniqueConstraint, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

__all__ = [
    "ROW_SCHEMA_VERSION",
    "ApiKey",
    "AuditChain",
    "AuditRecord",
    "KeyVersion",
    "MasterKeyCheck",
    "RotationPolicy",
    "SchemaInfo",
    "Tenant",
    "UTCDateTime",
    "utc_now",
]

ROW_SCHEMA_VERSION = 1


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store UTC (naive on SQLite, which has no time zones)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"unexpected timestamp value of type {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _new_id() -> str:
    return str(uuid4())


class Tenant(SQLModel, table=True):
    """A customer: a plan and one or more API keys."""

    __tablename__: ClassVar[str] = "pqkms_tenant"

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=36)
    name: str = Field(unique=True, max_length=200)
    plan: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)


class ApiKey(SQLModel, table=True):
    """An API key of a tenant; only the SHA-256 of the full key is stored."""

    __tablename__: ClassVar[str] = "pqkms_api_key"

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="pqkms_tenant.id", index=True, max_length=36)
    key_hash: str = Field(unique=True, index=True, max_length=64)
    key_prefix: str = Field(max_length=12)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)


class KeyVersion(SQLModel, table=True):
    """One version of a tenant's key for one algorithm, its seed wrapped under the KEK.

    The partial unique index lets the database itself refuse a second ``active`` version
    for the same tenant and algorithm.
    """

    __tablename__: ClassVar[str] = "pqkms_key_version"
    __table_args__ = (
        UniqueConstraint("tenant_id", "algorithm", "version", name="uq_pqkms_key_version"),
        Index(
            "uq_pqkms_key_version_one_active",
            "tenant_id",
            "algorithm",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(foreign_key="pqkms_tenant.id", index=True, max_length=36)
    algorithm: str = Field(max_length=32)
    version: int
    status: str = Field(max_length=16)
    public_key: bytes
    wrapped_seed: bytes
    seed_nonce: bytes
    kek_id: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    status_changed_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)


class MasterKeyCheck(SQLModel, table=True):
    """Key-check value of a master key, to refuse a wrong one at start."""

    __tablename__: ClassVar[str] = "pqkms_master_key_check"

    kek_id: str = Field(primary_key=True, max_length=16)
    check_value: bytes
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)


class SchemaInfo(SQLModel, table=True):
    """A single row recording the schema version the database was created with."""

    __tablename__: ClassVar[str] = "pqkms_schema_info"

    id: int = Field(default=1, primary_key=True)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class RotationPolicy(SQLModel, table=True):
    """How often a tenant's active version of one algorithm is rotated by the scheduler.

    At most one per tenant and algorithm (the unique constraint, which also serves the
    tenant lookups); the clock is the active version's ``created_at``.
    """

    __tablename__: ClassVar[str] = "pqkms_rotation_policy"
    __table_args__ = (
        UniqueConstraint("tenant_id", "algorithm", name="uq_pqkms_rotation_policy"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(foreign_key="pqkms_tenant.id", max_length=36)
    algorithm: str = Field(max_length=32)
    rotation_period_seconds: int
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)


class AuditRecord(SQLModel, table=True):
    """One record of a worker's hash-chained audit log (see ``docs/audit.md``).

    No foreign key to the tenant: records outlive tenants and name unknown callers. The
    primary key ``(chain_id, seq)`` is the only index, so an append costs one B-tree insert.
    """

    __tablename__: ClassVar[str] = "pqkms_audit_record"

    chain_id: str = Field(primary_key=True, max_length=36)
    seq: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    kind: str = Field(max_length=16)
    worker_id: str = Field(max_length=255)
    recorded_at: datetime = Field(sa_type=UTCDateTime)
    operation: str | None = Field(default=None, max_length=128)
    request_id: str | None = Field(default=None, max_length=128)
    tenant_id: str | None = Field(default=None, max_length=36)
    algorithm: str | None = Field(default=None, max_length=64)
    key_version: int | None = Field(default=None)
    outcome: str | None = Field(default=None, max_length=32)
    items: int
    duration_us: int = Field(sa_type=BigInteger)
    prev_hash: str = Field(max_length=64)
    record_hash: str = Field(max_length=64)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)


class AuditChain(SQLModel, table=True):
    """One audit chain (one worker process run): written when it opens and when it closes,
    so a closed chain whose last records were deleted is detected without the stream."""

    __tablename__: ClassVar[str] = "pqkms_audit_chain"

    chain_id: str = Field(primary_key=True, max_length=36)
    worker_id: str = Field(max_length=255)
    opened_at: datetime = Field(sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seq: int | None = Field(default=None, sa_type=BigInteger)
    last_hash: str | None = Field(default=None, max_length=64)
    # Records 1..archived_seq were moved to an archive file (``pqkms audit archive``);
    # archived_hash is the last one's hash, the link the first remaining record makes.
    archived_seq: int = Field(default=0, sa_type=BigInteger,
                              sa_column_kwargs={"server_default": text("0")})
    archived_hash: str | None = Field(default=None, max_length=64)
    schema_version: int = Field(default=ROW_SCHEMA_VERSION)

