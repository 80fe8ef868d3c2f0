"""``pqkms db backup``: a consistent copy of a SQLite key database, taken while it serves.

Copying the file of a running SQLite database is not a backup: a review's copy under
load failed SQLite's integrity check one time in three, and the others lacked what was
still in the write-ahead log. ``VACUUM INTO`` writes one consistent snapshot (a read
transaction: writers go on meanwhile), in a fraction of a second here where the sqlite3
shell's ``.backup`` kept restarting under load. The copy is checked before it is
reported. PostgreSQL has ``pg_dump`` for this (docs/deploy.md, "Backup and restore").

The copy holds wrapped seeds only: restoring it needs a master keyring holding the key
ids it names, which the report lists.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

__all__ = ["BackupError", "BackupReport", "backup_sqlite_database", "sqlite_file_of"]

_COUNTED_TABLES = ("pqkms_tenant", "pqkms_key_version", "pqkms_audit_record")


class BackupError(RuntimeError):
    """The backup was not made; the message is one line meant for the operator."""


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a finished backup holds."""

    target: Path
    size_bytes: int
    rows: dict[str, int]
    kek_ids: list[str]

    def describe(self) -> str:
        """One line for the operator."""
        counts = ", ".join(f"{count} {table.removeprefix('pqkms_')} rows"
                           for table, count in self.rows.items())
        keys = ", ".join(self.kek_ids) or "none recorded"
        return (f"backup written: {self.target} ({self.size_bytes} bytes; {counts}); "
                f"restoring it needs a master keyring holding kek id(s) {keys}: keep a copy "
                "of the master key file of this moment with it")


def sqlite_file_of(database_url: str) -> Path:
    """The database file of a SQLite URL; raises :class:`BackupError` for any other."""
    from worker.store.database import UnsupportedDatabaseURL, sqlite_database_file

    try:
        path = sqlite_database_file(database_url)
    except UnsupportedDatabaseURL as exc:
        raise BackupError(str(exc)) from None
    if path is not None:
        return path
    if make_url(database_url).get_backend_name() == "sqlite":
        raise BackupError("this SQLite database is not a file that can be backed up")
    raise BackupError(
        "pqkms db backup copies SQLite databases; for PostgreSQL use pg_dump -Fc "
        "(docs/deploy.md, Backup and restore)"
    )


def backup_sqlite_database(source: Path, target: Path) -> BackupReport:
    """Write a consistent copy of ``source`` to ``target`` (which must not exist) and
    check it; raises :class:`BackupError` with the reason otherwise."""
    if not source.is_file():
        raise BackupError(f"no database file at {source}")
    if not target.parent.is_dir():
        raise BackupError(f"no directory {target.parent} to write the backup in")
    try:
        # Created empty first, for its owner alone (VACUUM INTO fills an empty file):
        # the copy holds wrapped seeds and API key hashes.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise BackupError(f"{target} exists; a backup never overwrites a file") from None
    try:
        # Read-only: a backup cannot change the database, whatever goes wrong.
        with contextlib.closing(_read_only(source)) as connection:
            connection.execute("VACUUM INTO ?", (str(target),))
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise BackupError(f"the backup failed: {exc}") from None
    try:
        return _checked(target)
    except BackupError:
        target.unlink(missing_ok=True)
        raise


def _read_only(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    connection.isolation_level = None
    return connection


def _checked(target: Path) -> BackupReport:
    with contextlib.closing(_read_only(target)) as connection:
        verdict = connection.execute("PRAGMA integrity_check").fetchone()
        if verdict is None or verdict[0] != "ok":
            raise BackupError(f"the copy failed SQLite's integrity check: {verdict}")
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "pqkms_key_version" not in tables:
            raise BackupError("the database holds no pqkms tables; nothing was backed up")
        rows = {table: int(connection.execute(
                    f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 (fixed names)
                for table in _COUNTED_TABLES if table in tables}
        kek_ids = [row[0] for row in connection.execute(
            "SELECT kek_id FROM pqkms_master_key_check ORDER BY created_at")]
    return BackupReport(target, target.stat().st_size, rows, kek_ids)
