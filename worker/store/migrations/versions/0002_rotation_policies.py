"""Rotation policies: one scheduled rotation period per tenant and algorithm.

Creates ``pqkms_rotation_policy`` exactly as ``worker.store.tables.RotationPolicy``
declares it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the rotation policy table."""
    op.create_table(
        "pqkms_rotation_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("rotation_period_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["tenant_id"], ["pqkms_tenant.id"]),
        sa.UniqueConstraint("tenant_id", "algorithm", name="uq_pqkms_rotation_policy"),
    )


def downgrade() -> None:
    """Drop the rotation policy table."""
    op.drop_table("pqkms_rotation_policy")
