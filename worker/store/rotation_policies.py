"""Rotation policies: set, get, delete, list per tenant, and the key versions now due.

Writes lock the tenant row first, like the key store's lifecycle writes, so two writers
of one tenant's policy queue up instead of both inserting.
:meth:`RotationPolicyStore.due_keys` is the one query that spans tenants: it is the
scheduler's scan, and each row it returns pairs a tenant's policy with that same
tenant's key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.algorithms import Algorithm, KeyStatus, Plan
from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.store.database import open_session
from worker.store.tables import KeyVersion, RotationPolicy, Tenant, utc_now

__all__ = ["DueKey", "RotationPolicyRecord", "RotationPolicyStore"]


@dataclass(frozen=True, slots=True)
class RotationPolicyRecord:
    """One tenant's rotation period for one algorithm."""

    tenant_id: str
    algorithm: Algorithm
    rotation_period_seconds: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DueKey:
    """An active key version whose rotation period has run out."""

    tenant_id: str
    plan: Plan
    algorithm: Algorithm
    version: int
    created_at: datetime
    rotation_period_seconds: int

    @property
    def due_at(self) -> datetime:
        """When the version became due."""
        return self.created_at + timedelta(seconds=self.rotation_period_seconds)


def _record(row: RotationPolicy) -> RotationPolicyRecord:
    return RotationPolicyRecord(
        tenant_id=row.tenant_id,
        algorithm=Algorithm(row.algorithm),
        rotation_period_seconds=row.rotation_period_seconds,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _tenant_not_found() -> ServiceError:
    return ServiceError(ErrorCode.NOT_FOUND, "Tenant not found")


class RotationPolicyStore:
    """Rotation policies on the key store's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _session(self, *, write: bool) -> AsyncIterator[AsyncSession]:
        async with open_session(self._engine, write=write) as session:
            yield session

    @staticmethod
    async def _find(
        session: AsyncSession, tenant_id: str, algorithm: Algorithm
    ) -> RotationPolicy | None:
        query = select(RotationPolicy).where(
            RotationPolicy.tenant_id == tenant_id,
            RotationPolicy.algorithm == Algorithm(algorithm).value,
        )
        return (await session.exec(query)).first()

    async def set_policy(
        self, tenant_id: str, algorithm: Algorithm, rotation_period_seconds: int
    ) -> RotationPolicyRecord:
        """Create or replace the policy; ``ERR_NOT_FOUND_001`` for an unknown tenant."""
        if rotation_period_seconds < 1:
            raise ValueError("a rotation period is at least one second")
        async with self._session(write=True) as session:
            lock = select(Tenant.id).where(Tenant.id == tenant_id).with_for_update()
            if (await session.exec(lock)).first() is None:
                raise _tenant_not_found()
            row = await self._find(session, tenant_id, algorithm)
            now = utc_now()
            if row is None:
                row = RotationPolicy(
                    tenant_id=tenant_id,
                    algorithm=Algorithm(algorithm).value,
                    rotation_period_seconds=rotation_period_seconds,
                    created_at=now,
                    updated_at=now,
                )
            else:
                row.rotation_period_seconds = rotation_period_seconds
                row.updated_at = now
            session.add(row)
            await session.flush()
            record = _record(row)
            await session.commit()
        return record

    async def get_policy(self, tenant_id: str, algorithm: Algorithm) -> RotationPolicyRecord | None:
        """The tenant's policy for one algorithm, or ``None``."""
        async with self._session(write=False) as session:
            row = await self._find(session, tenant_id, algorithm)
        return None if row is None else _record(row)

    async def delete_policy(self, tenant_id: str, algorithm: Algorithm) -> bool:
        """Remove the tenant's policy for one algorithm; whether there was one."""
        async with self._session(write=True) as session:
            row = await self._find(session, tenant_id, algorithm)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
        return True

    async def list_policies(self, tenant_id: str) -> list[RotationPolicyRecord]:
        """Every policy of the tenant, by algorithm."""
        query = (
            select(RotationPolicy)
            .where(RotationPolicy.tenant_id == tenant_id)
            .order_by(col(RotationPolicy.algorithm))
        )
        async with self._session(write=False) as session:
            rows = (await session.exec(query)).all()
        return [_record(row) for row in rows]

    async def due_keys(self, now: datetime | None = None) -> list[DueKey]:
        """Active versions whose ``created_at + period <= now``, oldest due first.

        The comparison is made here rather than in SQL, where date arithmetic differs
        between SQLite and PostgreSQL; the join returns one row per policy that has an
        active version, which stays small next to the key table.
        """
        moment = now or utc_now()
        query = (
            # Only the key columns needed: never load wrapped seeds into a scan.
            select(RotationPolicy, Tenant.plan, KeyVersion.version, KeyVersion.created_at)
            .select_from(RotationPolicy)
            .join(
                KeyVersion,
                (col(KeyVersion.tenant_id) == col(RotationPolicy.tenant_id))
                & (col(KeyVersion.algorithm) == col(RotationPolicy.algorithm)),
            )
            .join(Tenant, col(Tenant.id) == col(RotationPolicy.tenant_id))
            .where(KeyVersion.status == KeyStatus.ACTIVE.value)
        )
        async with self._session(write=False) as session:
            rows = (await session.exec(query)).all()
        due = [
            DueKey(
                tenant_id=policy.tenant_id,
                plan=Plan(plan),
                algorithm=Algorithm(policy.algorithm),
                version=version,
                created_at=created_at,
                rotation_period_seconds=policy.rotation_period_seconds,
            )
            for policy, plan, version, created_at in rows
        ]
        return sorted((key for key in due if key.due_at <= moment), key=lambda key: key.due_at)
