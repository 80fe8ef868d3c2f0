"""The per-request key status read, kept off the ORM session path.

Every crypto request needs its key version's status as it is now (retire and archive
take effect at once on every worker), so this one lookup is the hottest query of the
service. On SQLite its answers are remembered until a status changes
(``worker.store.key_state``); this module is what runs when they are not.

- SQLite: a dedicated ``sqlite3`` connection, used synchronously on the event loop. A
  primary-key lookup in WAL mode costs tens of microseconds; going through aiosqlite
  costs several cross-thread hand-offs of ≈ 80 µs each. The connection is in autocommit
  mode and every query is stepped to completion, so each read is its own short read
  transaction and sees the latest commit of any process. ``query_only`` makes it unable
  to write. A short busy timeout bounds how long it can hold the loop; if SQLite is busy
  anyway (rare under WAL: recovery, a ``wal_checkpoint(TRUNCATE)``) the caller falls
  back to the async path.
- PostgreSQL (and SQLite databases this reader cannot share, such as ``:memory:``): one
  ``SELECT`` on a pooled connection in autocommit, without ``BEGIN``/``ROLLBACK``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy.engine import URL

__all__ = ["STATUS_QUERY", "SqliteStatusReader", "sqlite_reader_path"]

# Every read filters by tenant: another tenant's version is simply "not found".
STATUS_QUERY = (
    "SELECT status FROM pqkms_key_version WHERE tenant_id = ? AND algorithm = ? AND version = ?"
)
# Milliseconds the event loop may wait on a SQLite lock before falling back to the async path.
_READER_BUSY_TIMEOUT_MS = 50


def sqlite_reader_path(url: URL) -> Path | None:
    """The database file a synchronous reader may open, or ``None`` when it must not
    (in-memory and URI databases: a second connection would not see the same data)."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("uri") or url.query.get("mode"):
        return None
    return Path(database).expanduser()


class SqliteStatusReader:
    """A read-only ``sqlite3`` connection for :data:`STATUS_QUERY`, opened on first use.

    Used from the event loop thread only; not for anything that may block.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit BEGIN; each statement is its own transaction.
        connection = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, cached_statements=16
        )
        try:
            connection.execute(f"PRAGMA busy_timeout={_READER_BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA query_only=ON")
        except BaseException:
            connection.close()
            raise
        return connection

    def status(self, tenant_id: str, algorithm: str, version: int) -> str | None:
        """The stored status string, or ``None`` if the tenant has no such version.

        Raises :class:`sqlite3.Error` when SQLite is busy or the file cannot be read; the
        caller then takes the async path.
        """
        connection = self._connection
        if connection is None:
            connection = self._connection = self._connect()
        # fetchall steps the statement to SQLITE_DONE, which resets it and ends the read
        # transaction: a statement left mid-step would pin an old WAL snapshot.
        rows = connection.execute(STATUS_QUERY, (tenant_id, algorithm, version)).fetchall()
        return None if not rows else str(rows[0][0])

    def close(self) -> None:
        """Close the connection (idempotent); a later read reopens it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
