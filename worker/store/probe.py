"""A cheap read that tells whether the key database can serve requests right now.

The worker's health ping asks it (``worker.readiness``): a worker whose database file
is unreadable, or whose schema a botched migration or restore left without its tables,
answers every request with an error while its event loop, and so a bare ping, is fine.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["probe_database"]

# One row at most from each table a request reads: the API keys (every request), the key
# versions (every crypto request) and the audit trail (every request's record).
_PROBES = tuple(
    text(f"SELECT 1 FROM {table} LIMIT 1")  # noqa: S608 (fixed table names)
    for table in ("pqkms_api_key", "pqkms_key_version", "pqkms_audit_record")
)


async def probe_database(engine: AsyncEngine) -> None:
    """Read one row of each table requests need; raises what the database raises."""
    async with engine.connect() as connection:
        for probe in _PROBES:
            await connection.execute(probe)
