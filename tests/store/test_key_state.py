"""Remembered key statuses (SQLite): valid only while the generation file is unchanged.

The unit tests drive :class:`StatusCache` on a real file shared by two handles (two
processes' views); the store test proves that an edit by hand is seen once the
remembered status expires. That another store's (or process's) change is seen on the
next read is ``tests/store/test_status_read.py``'s, on every backend.
"""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from schemas.algorithms import Algorithm, KeyStatus
from tests.store.conftest import Backend
from worker.store import KeyStore, NewKeyMaterial, TenantRecord
from worker.store.key_state import KeyStateFile, StatusCache, key_state_path

K = Algorithm.KYBER768
KEY = ("tenant", K.value, 1)


def _cache(path: Path, ttl: float = 60.0) -> StatusCache:
    state = KeyStateFile.open(path)
    assert state is not None
    return StatusCache(state, ttl_seconds=ttl)


def test_a_status_is_remembered_until_another_process_changes_one(tmp_path: Path) -> None:
    path = tmp_path / "pqkms.db-keystate"
    mine, theirs = _cache(path), _cache(path)
    try:
        found, token = mine.lookup(KEY)
        assert found is None
        mine.remember(KEY, KeyStatus.ACTIVE, token)
        assert mine.lookup(KEY)[0] is KeyStatus.ACTIVE
        theirs.changed()  # another process retired something
        assert mine.lookup(KEY)[0] is None
    finally:
        mine.close()
        theirs.close()


def test_a_status_read_before_a_change_is_not_remembered(tmp_path: Path) -> None:
    path = tmp_path / "pqkms.db-keystate"
    mine, theirs = _cache(path), _cache(path)
    try:
        _, token = mine.lookup(KEY)
        theirs.changed()  # between our generation read and our database read
        mine.lookup(("tenant", K.value, 2))  # a later request sees the new generation
        mine.remember(KEY, KeyStatus.ACTIVE, token)  # what we read may be the old status
        assert mine.lookup(KEY)[0] is None
    finally:
        mine.close()
        theirs.close()


def test_remembered_statuses_expire(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "pqkms.db-keystate", ttl=0.0)
    try:
        _, token = cache.lookup(KEY)
        cache.remember(KEY, KeyStatus.ACTIVE, token)
        assert cache.lookup(KEY)[0] is None
    finally:
        cache.close()


def test_no_file_means_no_cache(tmp_path: Path) -> None:
    assert KeyStateFile.open(tmp_path / "missing-dir" / "pqkms.db-keystate") is None
    cache = _cache(tmp_path / "pqkms.db-keystate")
    cache.close()  # a closed file reads as unreadable
    _, token = cache.lookup(KEY)
    assert token is None
    cache.remember(KEY, KeyStatus.ACTIVE, token)
    assert cache.lookup(KEY)[0] is None


def test_the_file_is_the_owners_only(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "pqkms.db-keystate")
    try:
        cache.changed()
        mode = (tmp_path / "pqkms.db-keystate").stat().st_mode
        assert stat.S_IMODE(mode) == 0o600
    finally:
        cache.close()


async def test_an_edit_by_hand_is_seen_once_the_status_expires(
    backend: Backend, store: KeyStore, tenant: TenantRecord,
    new_material: Callable[[], NewKeyMaterial], monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend.sqlite_path is None:
        pytest.skip("statuses are remembered on SQLite only")
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    await store.rotate(tid, K, new_material(), None)
    assert await store.get_key_status(tid, K, 1) is KeyStatus.RETIRED
    with sqlite3.connect(backend.sqlite_path) as db:  # behind pqkms's back
        db.execute("UPDATE pqkms_key_version SET status = 'archived' "
                   "WHERE tenant_id = ? AND version = 1", (tid,))
    assert await store.get_key_status(tid, K, 1) is KeyStatus.RETIRED  # remembered
    assert key_state_path(backend.sqlite_path).exists()  # the rotation rewrote it
    now = time.monotonic()
    later = SimpleNamespace(monotonic=lambda: now + 2.0)  # this module's clock only
    monkeypatch.setattr("worker.store.key_state.time", later)
    assert await store.get_key_status(tid, K, 1) is KeyStatus.ARCHIVED


def test_one_generation_file_whatever_the_path_to_the_database(tmp_path: Path) -> None:
    real = tmp_path / "data" / "pqkms.db"
    real.parent.mkdir()
    real.touch()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    expected = real.resolve().with_name("pqkms.db-keystate")
    assert key_state_path(link) == key_state_path(real) == expected
