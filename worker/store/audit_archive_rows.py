"""The database side of ``pqkms audit archive``: a chain's oldest records leave the
database a bounded step at a time, each step moving the chain's anchor in the same
transaction.

Between any two steps the log verifies: the records still stored start right after the
anchor and the first of them links to its hash. A step is refused (``ArchiveConflict``)
when the anchor is no longer where this run found it (another archive ran meanwhile).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, delete, update
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.store.database import WRITE_TRANSACTION
from worker.store.tables import AuditChain, AuditRecord

__all__ = ["ArchiveConflict", "ArchiveStep", "drop_archived"]

_RECORDS: Table = AuditRecord.__table__  # type: ignore[attr-defined]
_CHAINS: Table = AuditChain.__table__  # type: ignore[attr-defined]


class ArchiveConflict(RuntimeError):
    """A chain's anchor moved while this archive ran (two archives at once)."""


@dataclass(frozen=True, slots=True)
class ArchiveStep:
    """Archive a chain up to and including ``seq``, whose hash is ``record_hash``."""

    seq: int
    record_hash: str


async def drop_archived(engine: AsyncEngine, chain_id: str, anchor: int,
                        steps: Sequence[ArchiveStep]) -> int:
    """Delete the chain's records after ``anchor`` up to each step's seq in turn, one
    transaction per step that also moves the anchor there; the records deleted."""
    deleted = 0
    async with engine.connect() as connection:
        await connection.execution_options(**{WRITE_TRANSACTION: True})
        for step in steps:
            async with connection.begin():
                moved = await connection.execute(
                    update(_CHAINS)
                    .where(_CHAINS.c.chain_id == chain_id, _CHAINS.c.archived_seq == anchor)
                    .values(archived_seq=step.seq, archived_hash=step.record_hash)
                )
                if moved.rowcount != 1:
                    raise ArchiveConflict(
                        f"chain {chain_id}: its archive anchor is no longer at seq {anchor} "
                        "(another archive ran meanwhile); this run deleted nothing more, from "
                        "this chain or the chains after it"
                    )
                result = await connection.execute(
                    delete(_RECORDS).where(_RECORDS.c.chain_id == chain_id,
                                           _RECORDS.c.seq > anchor,
                                           _RECORDS.c.seq <= step.seq)
                )
            deleted += result.rowcount
            anchor = step.seq
    return deleted
