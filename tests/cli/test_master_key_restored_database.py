"""``pqkms`` on a SQLite database restored from before a master-key rotation, with the
keyring of after it: every command says so, and ``pqkms master-key rewrap`` is the way
out (the operations review's finding: no command could repair it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.processes import run_pqkms
from worker.store import load_keyring

pytestmark = pytest.mark.long


def test_a_restored_database_is_explained_and_rewrap_brings_it_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    options = ("--data-dir", str(data))
    assert run_pqkms("db", "init", *options).returncode == 0
    created = run_pqkms("tenant", "create", "acme", "--plan", "pro", *options)
    assert created.returncode == 0, created.stderr
    api_key = json.loads(created.stdout)["api_key"]
    old_kek = load_keyring(data / "master.key").primary.kek_id
    shutil.copy2(data / "pqkms.db", tmp_path / "backup.db")  # nothing runs: a safe copy

    rotated = run_pqkms("master-key", "rotate", *options)
    assert rotated.returncode == 0, rotated.stderr
    new_kek = json.loads(rotated.stdout)["kek_id"]
    # Restore the database; the keyring stays the rotated one (primary new_kek).
    for leftover in data.glob("pqkms.db-*"):
        leftover.unlink()
    shutil.copy2(tmp_path / "backup.db", data / "pqkms.db")

    # A command given the whole keyring says exactly what happened.
    refused = run_pqkms("master-key", "add", *options)
    assert refused.returncode == 1
    assert "this database predates a master-key rotation" in refused.stderr
    assert f"but its primary {new_kek} is newer than the database" in refused.stderr
    assert f"check values for KEK ids {old_kek};" in refused.stderr
    assert "pqkms master-key rewrap" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The other commands read the whole keyring too, and say the same.
    refused = run_pqkms("tenant", "create", "other", "--plan", "free", *options)
    assert refused.returncode == 1
    assert "this database predates a master-key rotation" in refused.stderr
    assert "pqkms master-key rewrap" in refused.stderr

    status = run_pqkms("master-key", "status", *options)
    assert status.returncode == 0, status.stderr
    keys = {key["kek_id"]: key for key in json.loads(status.stdout)["keys"]}
    assert (keys[new_kek]["role"], keys[new_kek]["check_value_recorded"]) == ("primary", False)
    assert (keys[old_kek]["role"], keys[old_kek]["check_value_recorded"]) == ("previous", True)

    # Only with the primary named: the same file rotated elsewhere would look alike.
    unnamed = run_pqkms("master-key", "rewrap", *options)
    assert unnamed.returncode == 1
    assert f"--adopt-primary {new_kek}" in unnamed.stderr
    rewrapped = run_pqkms("master-key", "rewrap", "--adopt-primary", new_kek, *options)
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert json.loads(rewrapped.stdout)["remaining_under_old_keys"] == 0

    again = run_pqkms("tenant", "create", "other", "--plan", "free", *options)
    assert again.returncode == 0, again.stderr
    listed = run_pqkms("tenant", "api-key", "list", "acme", *options)
    assert listed.returncode == 0, listed.stderr
    assert api_key[:12] in listed.stdout
