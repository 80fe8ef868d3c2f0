"""The operator's view of tenants: every tenant with its counts, and a change of plan.

Workers read a tenant's plan with its API key (``worker.services.auth``, remembered for
10 s), so a changed plan holds everywhere within that time: its rate limit, its burst
and its limit of key versions. Key versions over a lower plan's limit are kept; the
limit refuses new ones only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from schemas.algorithms import Plan
from worker.store.database import open_session
from worker.store.tables import ApiKey, KeyVersion, Tenant

__all__ = ["PlanChange", "TenantDirectory", "TenantSummary"]


@dataclass(frozen=True, slots=True)
class TenantSummary:
    """A tenant as an operator lists it: never a key, a seed or a hash."""

    tenant_id: str
    name: str
    plan: Plan
    created_at: datetime
    active_api_keys: int
    key_versions: int


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A tenant's plan before and after a change."""

    tenant_id: str
    name: str
    previous_plan: Plan
    plan: Plan


class TenantDirectory:
    """Tenants across the key store's database (operator commands only: workers never
    read across tenants)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list_tenants(self) -> list[TenantSummary]:
        """Every tenant by name, with its unrevoked API keys and its key versions."""
        active_keys = (
            select(ApiKey.tenant_id, func.count().label("count"))
            .where(col(ApiKey.revoked_at).is_(None))
            .group_by(col(ApiKey.tenant_id))
            .subquery()
        )
        versions = (
            select(KeyVersion.tenant_id, func.count().label("count"))
            .group_by(col(KeyVersion.tenant_id))
            .subquery()
        )
        query = (
            select(Tenant, active_keys.c.count, versions.c.count)
            .outerjoin(active_keys, active_keys.c.tenant_id == Tenant.id)
            .outerjoin(versions, versions.c.tenant_id == Tenant.id)
            .order_by(col(Tenant.name))
        )
        async with open_session(self._engine, write=False) as session:
            rows = (await session.exec(query)).all()
        return [
            TenantSummary(tenant_id=tenant.id, name=tenant.name, plan=Plan(tenant.plan),
                          created_at=tenant.created_at, active_api_keys=keys or 0,
                          key_versions=count or 0)
            for tenant, keys, count in rows
        ]

    async def set_plan(self, name: str, plan: Plan) -> PlanChange | None:
        """Move the tenant named ``name`` to ``plan`` (``None``: no such tenant), its
        row locked while it changes."""
        async with open_session(self._engine, write=True) as session:
            query = select(Tenant).where(Tenant.name == name).with_for_update()
            tenant = (await session.exec(query)).first()
            if tenant is None:
                return None
            change = PlanChange(tenant_id=tenant.id, name=tenant.name,
                                previous_plan=Plan(tenant.plan), plan=Plan(plan))
            tenant.plan = change.plan.value
            session.add(tenant)
            await session.commit()
        return change
