"""Who is asking: the authenticated tenant of one request."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.algorithms import Plan

__all__ = ["Caller"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The tenant a request acts for, after authentication."""

    tenant_id: str
    plan: Plan
    request_id: str
