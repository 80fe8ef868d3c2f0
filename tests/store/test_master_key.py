"""Master key file handling, seed wrapping and the key-check value."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from worker.store import (
    MasterKey,
    MasterKeyError,
    MasterKeyring,
    SeedIntegrityError,
    key_check_value,
    load_keyring,
    load_or_create_master_key,
    master_key_from_base64,
    seed_aad,
    unwrap_seed,
    wrap_seed,
)
from worker.store.keyring import keyring_from_text, keyring_to_text, write_keyring_file


def test_created_with_mode_0600_in_a_new_directory_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "master.key"
    created = load_or_create_master_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert content.endswith(b"\n")
    assert base64.b64decode(content.strip()) == created.key
    reloaded = load_or_create_master_key(path, create=False)
    assert reloaded == created
    assert reloaded.kek_id == created.kek_id
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temp file left


def test_kek_id_is_sha256_prefix(tmp_path: Path) -> None:
    import hashlib

    key = MasterKey(bytes(range(32)))
    assert key.kek_id == hashlib.sha256(b"pqkms-kek-id" + bytes(range(32))).digest()[:8].hex()
    assert len(key.kek_id) == 16


def test_missing_file_without_create_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(MasterKeyError, match="does not exist"):
        load_or_create_master_key(path, create=False)
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (base64.b64encode(b"x" * 16) + b"\n", "32 bytes, got 16"),
        (b"not base64!!\n", "not valid base64"),
        (b"", "32 bytes, got 0"),
    ],
)
def test_malformed_file_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    with pytest.raises(MasterKeyError, match=reason):
        load_or_create_master_key(path)
    assert path.read_bytes() == content  # never overwritten


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key(path)
    path.chmod(0)
    with pytest.raises(MasterKeyError, match="Cannot read"):
        load_or_create_master_key(path)


def test_concurrent_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    results: list[MasterKey] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_master_key(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len({r.kek_id for r in results}) == 1


def test_base64_form_and_repr_hides_the_key() -> None:
    raw = os.urandom(32)
    key = master_key_from_base64(base64.b64encode(raw).decode() + "\n")
    assert key.key == raw
    for text in (repr(key), str(key)):
        assert raw.hex() not in text
        assert base64.b64encode(raw).decode() not in text
        assert key.kek_id in text
    with pytest.raises(MasterKeyError):
        master_key_from_base64(base64.b64encode(os.urandom(31)).decode())
    with pytest.raises(MasterKeyError):
        MasterKey(b"short")


def test_wrap_unwrap_round_trip_and_binding() -> None:
    master = MasterKey(os.urandom(32))
    seed = os.urandom(64)
    aad = seed_aad("tenant-a", "Kyber768", 3, master.kek_id)
    nonce, wrapped = wrap_seed(master, seed, aad)
    assert len(nonce) == 12
    assert seed not in wrapped
    assert unwrap_seed(master, nonce, wrapped, aad) == seed
    # Each field of the binding matters.
    for other in (
        seed_aad("tenant-b", "Kyber768", 3, master.kek_id),
        seed_aad("tenant-a", "Dilithium3", 3, master.kek_id),
        seed_aad("tenant-a", "Kyber768", 4, master.kek_id),
        seed_aad("tenant-a", "Kyber768", 3, "0" * 16),
    ):
        with pytest.raises(SeedIntegrityError):
            unwrap_seed(master, nonce, wrapped, other)
    with pytest.raises(SeedIntegrityError):
        unwrap_seed(MasterKey(os.urandom(32)), nonce, wrapped, aad)
    # A fresh nonce every time.
    assert wrap_seed(master, seed, aad)[0] != nonce


def test_key_check_value_identifies_the_key() -> None:
    a, b = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
    assert len(key_check_value(a)) == 16
    assert key_check_value(a) == key_check_value(MasterKey(a.key))
    assert key_check_value(a) != key_check_value(b)


# -- the keyring text format ---------------------------------------------------------------


def _b64(key: MasterKey) -> str:
    return base64.b64encode(key.key).decode()


def test_keyring_text_round_trips_with_roles_and_comments() -> None:
    primary, old, upcoming = (MasterKey(os.urandom(32)) for _ in range(3))
    text = (
        "# a comment line\n\n"
        f"previous {_b64(old)}   # kek {old.kek_id}\n"
        f"primary\t{_b64(primary)}\n"
        f"next {_b64(upcoming)}\n"
    )
    keyring = keyring_from_text(text)
    assert keyring == MasterKeyring(primary, (old,), (upcoming,))
    assert keyring.kek_ids == (primary.kek_id, old.kek_id, upcoming.kek_id)
    assert keyring_from_text(keyring_to_text(keyring)) == keyring
    assert keyring_from_text(f"primary {_b64(primary)}\n") == MasterKeyring.single(primary)
    for text in (repr(keyring), str(keyring)):
        assert primary.kek_id in text
        assert all(_b64(k) not in text and k.key.hex() not in text for k in keyring.keys)


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (["primary {a}", "primary {b}"], "exactly one primary key, found 2"),
        (["previous {a}", "next {b}"], "exactly one primary key, found 0"),
        (["primary {a}", "{b}"], "line 2: expected"),
        (["primary {a}", "spare {b}"], "line 2: expected"),
        (["primary {a}", "next {a}"], "twice"),
        (["primary {a}", "next c2hvcnQ="], "line 2: The master key must decode to 32 bytes"),
    ],
)
def test_malformed_keyrings_are_refused_without_echoing_keys(
    tmp_path: Path, lines: list[str], reason: str
) -> None:
    a, b = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
    text = "\n".join(lines).format(a=_b64(a), b=_b64(b)) + "\n"
    path = tmp_path / "master.key"
    path.write_text(text)
    with pytest.raises(MasterKeyError, match=reason) as failure:
        load_or_create_master_key(path)
    assert _b64(a) not in str(failure.value) and _b64(b) not in str(failure.value)
    assert path.read_text() == text  # never rewritten


def test_legacy_loader_returns_the_primary_of_a_keyring_file(tmp_path: Path) -> None:
    primary, old = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
    path = tmp_path / "master.key"
    write_keyring_file(path, MasterKeyring(primary, (old,)))
    assert load_or_create_master_key(path, create=False) == primary
    assert load_keyring(path) == MasterKeyring(primary, (old,))


def test_keyring_edits_keep_one_primary() -> None:
    first, second, third = (MasterKey(os.urandom(32)) for _ in range(3))
    ring = MasterKeyring.single(first).with_next(second)
    promoted = ring.promoted(second)
    assert promoted == MasterKeyring(second, (first,))
    assert promoted.promoted(second) is promoted
    assert promoted.with_next(third).without([first.kek_id]) == MasterKeyring(second, (), (third,))
    with pytest.raises(MasterKeyError, match="primary"):
        promoted.without([second.kek_id])
    assert promoted.role_of(first.kek_id) == "previous" and promoted.get(third.kek_id) is None


def test_a_file_others_may_read_is_loaded_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    created = load_or_create_master_key(path)
    with capture_logs() as silent:
        load_or_create_master_key(path, create=False)
    assert not [log for log in silent if log["event"] == "master_key_file_permissions"]
    path.chmod(0o644)
    with capture_logs() as logs:
        for _ in range(3):
            assert load_or_create_master_key(path, create=False).key == created.key
    warnings = [log for log in logs if log["event"] == "master_key_file_permissions"]
    assert len(warnings) == 1 and warnings[0]["mode"] == "0o644"
    assert base64.b64encode(created.key).decode() not in str(logs)
