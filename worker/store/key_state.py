"""Key-version statuses remembered per process, invalidated through a shared file (SQLite).

Every crypto request needs its key version's status, and a ``retire`` or ``archive``
that has been answered must be honoured by every worker at once. On SQLite (one
machine by construction) the workers share a small *generation file* next to the
database, ``<database>-keystate``:

- a process that changes a status (rotate, retire, archive) writes a new random value
  into it **after** its transaction commits and **before** it answers;
- a process reads the file (one ``pread``, under a microsecond) before it looks at its
  remembered statuses; a value other than the one it last saw clears them all, and the
  status is read from the database again.

A request that starts after a status change was answered therefore reads the new value
and the fresh status; one that overlapped the change may see either, as it would
without a cache. Statuses are also forgotten after :data:`STATUS_TTL_SECONDS`, which
bounds how long a change made behind pqkms's back (SQL by hand) goes unnoticed. A file
that cannot be opened or read (permissions) means no cache in that process: every read
goes to the database, as before. PostgreSQL deployments span machines and keep the fresh
read per request (``docs/decisions.md``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import structlog

from schemas.algorithms import KeyStatus

__all__ = ["STATUS_TTL_SECONDS", "KeyStateFile", "StatusCache", "key_state_path"]

STATUS_TTL_SECONDS = 1.0
_log = structlog.get_logger("pqkms.store")
_TOKEN_BYTES = 16
_MAX_ENTRIES = 4096

StatusKey = tuple[str, str, int]  # (tenant id, algorithm name, version)


def key_state_path(database: Path) -> Path:
    """The generation file of a SQLite database file, next to the real file: workers
    that reach one database by different paths (a symlink, another working directory)
    share one generation file, as SQLite shares its WAL."""
    real = database.expanduser().resolve()
    return real.with_name(real.name + "-keystate")


class KeyStateFile:
    """The generation file: read by every worker, rewritten after each status change."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    @classmethod
    def open(cls, path: Path) -> KeyStateFile | None:
        """Open (creating it, owner-only) the file, or ``None`` if that is not possible.

        ``None`` is logged: this process then neither remembers statuses nor tells the
        others of its changes, which they notice only when theirs expire (e.g. a worker
        running as another user than the one that created the file).
        """
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            _log.warning("key_state_file_unavailable", path=str(path),
                         reason=exc.strerror or type(exc).__name__)
            return None
        return cls(descriptor)

    def token(self) -> bytes | None:
        """The current value; ``None`` once closed or when the file cannot be read."""
        descriptor = self._descriptor
        if descriptor is None:
            return None
        try:
            return os.pread(descriptor, _TOKEN_BYTES, 0)
        except OSError:
            return None

    def bump(self) -> None:
        """Tell every process that a status changed (safe to call too often)."""
        descriptor = self._descriptor
        if descriptor is not None:
            with contextlib.suppress(OSError):
                # Random, not a counter: no read-modify-write race between processes.
                os.pwrite(descriptor, os.urandom(_TOKEN_BYTES), 0)

    def close(self) -> None:
        """Close the file (idempotent); later tokens are ``None``: no cache."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)


class StatusCache:
    """Statuses read from the database, valid while the generation file is unchanged."""

    def __init__(self, state: KeyStateFile, ttl_seconds: float = STATUS_TTL_SECONDS,
                 max_entries: int = _MAX_ENTRIES) -> None:
        self._state = state
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._seen: bytes | None = None
        self._entries: dict[StatusKey, tuple[KeyStatus, float]] = {}

    def lookup(self, key: StatusKey) -> tuple[KeyStatus | None, bytes | None]:
        """The remembered status (``None``: read the database) and the generation read
        first, to hand back to :meth:`remember` with what the database says."""
        token = self._state.token()
        if token is None or token != self._seen:
            self._entries.clear()
            self._seen = token
            return None, token
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None, token
        return entry[0], token

    def remember(self, key: StatusKey, status: KeyStatus, token: bytes | None) -> None:
        """Keep ``status``, read after ``token`` was; dropped if the generation moved."""
        if token is None or token != self._seen:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (status, time.monotonic() + self._ttl)

    def changed(self) -> None:
        """This process changed a status: tell every process (this one included)."""
        self._entries.clear()
        self._state.bump()

    def close(self) -> None:
        """Forget everything and close the file."""
        self._entries.clear()
        self._state.close()
