"""Baseline: every table and index pqkms created before it used migrations.

The same DDL as ``SQLModel.metadata.create_all`` produced for tenants, API keys, key
versions, the master-key check value and the schema-info row, so a database created
before Alembic is adopted by stamping it at this revision. The partial unique index
lets the database itself refuse a second active version of one tenant's algorithm, on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _schema_version() -> sa.Column[int]:
    return sa.Column("schema_version", sa.Integer(), nullable=False)


def upgrade() -> None:
    """Create the baseline tables and their indexes."""
    op.create_table(
        "pqkms_tenant",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        _timestamp("created_at"),
        _schema_version(),
        sa.PrimaryKeyConstraint("id"),
        # Unnamed, as create_all made it (PostgreSQL calls it pqkms_tenant_name_key).
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "pqkms_api_key",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_prefix", sa.String(length=12), nullable=False),
        _timestamp("created_at"),
        _timestamp("revoked_at", nullable=True),
        _schema_version(),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["tenant_id"], ["pqkms_tenant.id"]),
    )
    op.create_index("ix_pqkms_api_key_tenant_id", "pqkms_api_key", ["tenant_id"])
    op.create_index("ix_pqkms_api_key_key_hash", "pqkms_api_key", ["key_hash"], unique=True)
    op.create_table(
        "pqkms_key_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("wrapped_seed", sa.LargeBinary(), nullable=False),
        sa.Column("seed_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("kek_id", sa.String(length=16), nullable=False),
        _timestamp("created_at"),
        _timestamp("status_changed_at"),
        _schema_version(),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["tenant_id"], ["pqkms_tenant.id"]),
        sa.UniqueConstraint("tenant_id", "algorithm", "version", name="uq_pqkms_key_version"),
    )
    op.create_index("ix_pqkms_key_version_tenant_id", "pqkms_key_version", ["tenant_id"])
    op.create_index(
        "uq_pqkms_key_version_one_active",
        "pqkms_key_version",
        ["tenant_id", "algorithm"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "pqkms_master_key_check",
        sa.Column("kek_id", sa.String(length=16), nullable=False),
        sa.Column("check_value", sa.LargeBinary(), nullable=False),
        _timestamp("created_at"),
        _schema_version(),
        sa.PrimaryKeyConstraint("kek_id"),
    )
    op.create_table(
        "pqkms_schema_info",
        sa.Column("id", sa.Integer(), nullable=False),
        _schema_version(),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    """Drop every baseline table (and with them all keys: only for an empty database)."""
    op.drop_table("pqkms_schema_info")
    op.drop_table("pqkms_master_key_check")
    op.drop_index("uq_pqkms_key_version_one_active", table_name="pqkms_key_version")
    op.drop_index("ix_pqkms_key_version_tenant_id", table_name="pqkms_key_version")
    op.drop_table("pqkms_key_version")
    op.drop_index("ix_pqkms_api_key_key_hash", table_name="pqkms_api_key")
    op.drop_index("ix_pqkms_api_key_tenant_id", table_name="pqkms_api_key")
    op.drop_table("pqkms_api_key")
    op.drop_table("pqkms_tenant")
