"""Schema migrations of the key store (Alembic), packaged with the code.

``versions/<id>_<name>.py`` are the revisions (``0001`` is the baseline: every table
that existed before migrations); ``env.py`` runs them on the connection pqkms hands
over. :mod:`worker.store.database` takes the schema lock and calls
:func:`upgrade_to_head`; ``pqkms db upgrade`` and ``pqkms db current`` are the
operator's view of it.
"""

from __future__ import annotations

from worker.store.migrations.runner import (
    BASELINE_REVISION,
    SchemaError,
    SchemaOutOfDate,
    SchemaState,
    SchemaTooNew,
    SchemaUpgrade,
    alembic_config,
    head_revision,
    read_schema_state,
    require_head,
    upgrade_to_head,
)

__all__ = [
    "BASELINE_REVISION",
    "SchemaError",
    "SchemaOutOfDate",
    "SchemaState",
    "SchemaTooNew",
    "SchemaUpgrade",
    "alembic_config",
    "head_revision",
    "read_schema_state",
    "require_head",
    "upgrade_to_head",
]
