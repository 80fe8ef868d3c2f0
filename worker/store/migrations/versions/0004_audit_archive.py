"""Audit archive: where each chain's records moved to archive files end.

Adds ``archived_seq`` and ``archived_hash`` to ``pqkms_audit_chain`` (0 and null: nothing
archived), exactly as ``worker.store.tables.AuditChain`` declares them. Only adds, with
defaults: workers of the release before keep writing chains. Nothing is archived by the
upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the archive anchor columns."""
    with op.batch_alter_table("pqkms_audit_chain") as chain:
        chain.add_column(sa.Column("archived_seq", sa.BigInteger(), nullable=False,
                                   server_default="0"))
        chain.add_column(sa.Column("archived_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop the anchor columns (archived records stay in their files)."""
    with op.batch_alter_table("pqkms_audit_chain") as chain:
        chain.drop_column("archived_hash")
        chain.drop_column("archived_seq")
