"""API key → tenant, with a short-lived cache so most requests skip the database."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING

from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_material import BoundedCache

if TYPE_CHECKING:
    from worker.store import KeyStore, TenantRecord

__all__ = ["Authenticator"]

_API_KEY_PREFIX = "qph_"


class Authenticator:
    """Checks ``X-API-Key``. Only a hash of each key is kept in memory."""

    def __init__(self, store: KeyStore, ttl_seconds: float = 10.0, max_entries: int = 4096) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._cache: BoundedCache[bytes, tuple[float, TenantRecord]] = BoundedCache(max_entries)
        # Lookups in flight by key fingerprint: when a cached entry expires under load,
        # the requests that arrive meanwhile share one database query instead of
        # queueing hundreds of identical ones for the connection pool.
        self._pending: dict[bytes, asyncio.Task[TenantRecord | None]] = {}

    async def authenticate(self, api_key: str | None, request_id: str) -> Caller:
        """The caller for a key, or 401 ``ERR_AUTH_001``."""
        if not api_key or not api_key.startswith(_API_KEY_PREFIX):
            raise ServiceError(ErrorCode.AUTH)
        fingerprint = hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache.get(fingerprint)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            tenant = cached[1]
        else:
            found = await self._lookup(fingerprint, api_key)
            if found is None:
                raise ServiceError(ErrorCode.AUTH)
            tenant = found
            self._cache.put(fingerprint, (now + self._ttl, tenant))
        return Caller(tenant_id=tenant.tenant_id, plan=tenant.plan, request_id=request_id)

    async def _lookup(self, fingerprint: bytes, api_key: str) -> TenantRecord | None:
        task = self._pending.get(fingerprint)
        if task is None:
            task = asyncio.ensure_future(self._store.authenticate(api_key))
            self._pending[fingerprint] = task
            task.add_done_callback(lambda done: self._finished(fingerprint, done))
        # shield: one cancelled request must not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    def _finished(self, fingerprint: bytes, task: asyncio.Task[TenantRecord | None]) -> None:
        if self._pending.get(fingerprint) is task:
            del self._pending[fingerprint]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter was cancelled
