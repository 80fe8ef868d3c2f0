"""``pqkms tenant create`` and ``pqkms db init`` on a temporary data directory."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import stat
from pathlib import Path

import pytest

from pqkms.admin import database_url_with_password
from schemas.algorithms import Plan
from tests.cli.processes import clean_env, run_pqkms
from worker.store import KeyStore, load_or_create_master_key

pytestmark = pytest.mark.long


async def _authenticate(data_dir: Path, api_key: str) -> tuple[str, str, str] | None:
    master = load_or_create_master_key(data_dir / "master.key", create=False)
    store = await KeyStore.open(
        f"sqlite+aiosqlite:///{data_dir / 'pqkms.db'}", master, create_schema=False
    )
    try:
        tenant = await store.authenticate(api_key)
    finally:
        await store.close()
    return None if tenant is None else (tenant.tenant_id, tenant.name, Plan(tenant.plan).value)


def test_tenant_create_prints_one_json_object_whose_key_authenticates(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_pqkms("tenant", "create", "acme", "--plan", "pro", "--data-dir", str(data_dir))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    created = json.loads(lines[0])
    assert set(created) == {"tenant_id", "name", "plan", "api_key"}
    assert created["name"] == "acme"
    assert created["plan"] == "pro"
    assert created["api_key"].startswith("qph_")
    found = asyncio.run(_authenticate(data_dir, created["api_key"]))
    assert found == (created["tenant_id"], "acme", "pro")
    assert asyncio.run(_authenticate(data_dir, created["api_key"] + "x")) is None
    # The key is shown once, on stdout only.
    assert created["api_key"] not in result.stderr


def test_a_warning_goes_to_stderr_and_stdout_keeps_its_one_json_object(
    tmp_path: Path,
) -> None:
    # A master key file others may read is a warning (the Compose secret is 0644); it
    # once went to stdout, so a script reading the JSON lost the only copy of the key.
    data_dir = tmp_path / "data"
    assert run_pqkms("db", "init", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "master.key").chmod(0o644)
    result = run_pqkms("tenant", "create", "acme", "--plan", "pro", "--data-dir", str(data_dir))

    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["api_key"].startswith("qph_")
    assert "master_key_file_permissions" in result.stderr
    assert "master_key_file_permissions" not in result.stdout


def test_first_run_creates_a_private_master_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_pqkms("tenant", "create", "acme", "--plan", "free", "--data-dir", str(data_dir))

    assert result.returncode == 0, result.stderr
    key_file = data_dir / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert len(base64.b64decode(key_file.read_text().strip())) == 32


def test_duplicate_tenant_name_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    first = run_pqkms("tenant", "create", "acme", "--plan", "free", "--data-dir", data_dir)
    assert first.returncode == 0, first.stderr

    second = run_pqkms("tenant", "create", "acme", "--plan", "pro", "--data-dir", data_dir)

    assert second.returncode == 1
    assert second.stdout == ""
    assert "a tenant named 'acme' already exists" in second.stderr
    assert "Traceback" not in second.stderr


def test_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    env = clean_env(PQKMS_DATA_DIR=str(data_dir))

    result = run_pqkms("tenant", "create", "acme", "--plan", "enterprise", env=env)

    assert result.returncode == 0, result.stderr
    assert (data_dir / "pqkms.db").exists()


def test_unknown_plan_is_a_usage_error(tmp_path: Path) -> None:
    result = run_pqkms(
        "tenant", "create", "acme", "--plan", "gold", "--data-dir", str(tmp_path / "d")
    )

    assert result.returncode == 2
    assert "invalid choice: 'gold'" in result.stderr
    assert not (tmp_path / "d").exists()


def test_wrong_master_key_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_pqkms("db", "init", "--data-dir", str(data_dir)).returncode == 0
    other_key = tmp_path / "other.key"
    other_key.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")

    result = run_pqkms(
        "tenant", "create", "acme", "--plan", "free",
        "--data-dir", str(data_dir), "--master-key-file", str(other_key),
    )  # fmt: skip

    assert result.returncode == 1
    assert "master key does not match" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_init_is_idempotent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = run_pqkms("db", "init", "--data-dir", str(data_dir))
    key = (data_dir / "master.key").read_text()
    second = run_pqkms("db", "init", "--data-dir", str(data_dir))

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert (data_dir / "master.key").read_text() == key
    assert second.stdout.startswith("database ready: sqlite+aiosqlite:///")
    assert key.strip() not in first.stdout + first.stderr


def test_explicit_database_url_needs_an_existing_master_key(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'elsewhere.db'}"
    missing = tmp_path / "missing.key"

    result = run_pqkms(
        "tenant", "create", "acme", "--plan", "free",
        "--database-url", url, "--master-key-file", str(missing),
    )  # fmt: skip

    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert not missing.exists()


def test_database_password_file_goes_into_the_url_not_the_output(tmp_path: Path) -> None:
    assert (
        database_url_with_password("postgresql+asyncpg://pqkms@db:5432/pqkms", "p@ss/w:rd")
        == "postgresql+asyncpg://pqkms:p%40ss%2Fw%3Ard@db:5432/pqkms"
    )
    password_file = tmp_path / "password"
    password_file.write_text("s3cret-password\n")
    # Nothing listens on port 9 (discard): the connection fails, and the message that
    # says so must not contain the password.
    result = run_pqkms(
        "db", "init", "--database-url", "postgresql+asyncpg://pqkms@127.0.0.1:9/pqkms",
        "--database-password-file", str(password_file), "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip

    assert result.returncode != 0
    assert "s3cret-password" not in result.stdout + result.stderr


def test_an_api_key_is_rotated_by_adding_a_new_one_and_revoking_the_old(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = ("--data-dir", str(data_dir))
    created = json.loads(run_pqkms("tenant", "create", "acme", "--plan", "pro", *store).stdout)
    other = json.loads(run_pqkms("tenant", "create", "umbrella", "--plan", "pro", *store).stdout)
    old_key = created["api_key"]

    added = run_pqkms("tenant", "api-key", "add", "acme", *store)
    assert added.returncode == 0, added.stderr
    new_key = json.loads(added.stdout)["api_key"]
    assert json.loads(added.stdout) == {"tenant_id": created["tenant_id"], "name": "acme",
                                        "api_key": new_key}
    # Another tenant's key, or a key that is no one's, is not revoked through acme.
    for wrong in (other["api_key"], "qph_" + "x" * 43):
        refused = run_pqkms("tenant", "api-key", "revoke", "acme", *store, stdin=wrong + "\n")
        assert refused.returncode == 1
        assert "that API key does not belong to tenant 'acme'" in refused.stderr
        assert wrong not in refused.stderr + refused.stdout
    revoked = run_pqkms("tenant", "api-key", "revoke", "acme", *store, stdin=old_key + "\n")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {"name": "acme", "revoked": True}
    assert old_key not in revoked.stdout + revoked.stderr

    assert asyncio.run(_authenticate(data_dir, old_key)) is None
    assert asyncio.run(_authenticate(data_dir, new_key)) == (created["tenant_id"], "acme", "pro")
    assert asyncio.run(_authenticate(data_dir, other["api_key"])) is not None


def test_a_leaked_key_is_revoked_by_its_prefix_and_an_incident_revokes_them_all(
    tmp_path: Path,
) -> None:
    """An operator who no longer holds a leaked key revokes it by the prefix `list`
    shows; `--all` revokes every key of the tenant (a review found neither possible)."""
    data_dir = tmp_path / "data"
    store = ("--data-dir", str(data_dir))
    first = json.loads(run_pqkms("tenant", "create", "acme", "--plan", "pro", *store).stdout)
    second = json.loads(run_pqkms("tenant", "api-key", "add", "acme", *store).stdout)
    other = json.loads(run_pqkms("tenant", "create", "umbrella", "--plan", "pro", *store).stdout)

    listed = run_pqkms("tenant", "api-key", "list", "acme", *store)
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert [key["prefix"] for key in keys] == [first["api_key"][:12], second["api_key"][:12]]
    assert all(key["revoked_at"] is None for key in keys)
    assert first["api_key"] not in listed.stdout and second["api_key"] not in listed.stdout

    leaked = second["api_key"]
    pasted = run_pqkms("tenant", "api-key", "revoke", "acme", "--prefix", leaked, *store)
    assert pasted.returncode == 1 and leaked not in pasted.stderr  # a whole key: refused
    by_prefix = run_pqkms("tenant", "api-key", "revoke", "acme", "--prefix", leaked[:12], *store)
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert json.loads(by_prefix.stdout) == {"name": "acme", "revoked": 1}
    assert asyncio.run(_authenticate(data_dir, leaked)) is None
    assert asyncio.run(_authenticate(data_dir, first["api_key"])) is not None
    again = run_pqkms("tenant", "api-key", "revoke", "acme", "--prefix", leaked[:12], *store)
    assert again.returncode == 1 and "no unrevoked API key with prefix" in again.stderr
    # Another tenant's prefix is not acme's.
    theirs = run_pqkms("tenant", "api-key", "revoke", "acme", "--prefix",
                       other["api_key"][:12], *store)
    assert theirs.returncode == 1

    everything = run_pqkms("tenant", "api-key", "revoke", "acme", "--all", *store)
    assert json.loads(everything.stdout) == {"name": "acme", "revoked": 1}
    assert asyncio.run(_authenticate(data_dir, first["api_key"])) is None
    assert asyncio.run(_authenticate(data_dir, other["api_key"])) is not None
    revoked = json.loads(run_pqkms("tenant", "api-key", "list", "acme", *store).stdout)
    assert all(key["revoked_at"] is not None for key in revoked)


def test_api_key_commands_refuse_an_unknown_tenant_or_no_key(tmp_path: Path) -> None:
    store = ("--data-dir", str(tmp_path / "data"))
    assert run_pqkms("tenant", "create", "acme", "--plan", "free", *store).returncode == 0

    unknown = run_pqkms("tenant", "api-key", "add", "nobody", *store)
    assert unknown.returncode == 1
    assert "no tenant named 'nobody'" in unknown.stderr
    empty = run_pqkms("tenant", "api-key", "revoke", "acme", *store, stdin="\n")
    assert empty.returncode == 1
    assert "no API key given on stdin" in empty.stderr


def test_tenants_are_listed_and_moved_to_another_plan(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = ("--data-dir", str(data_dir))
    acme = json.loads(run_pqkms("tenant", "create", "acme", "--plan", "free", *store).stdout)
    umbrella = json.loads(run_pqkms("tenant", "create", "umbrella", "--plan", "pro",
                                    *store).stdout)

    moved = run_pqkms("tenant", "set-plan", "acme", "--plan", "enterprise", *store)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout) == {"tenant_id": acme["tenant_id"], "name": "acme",
                                        "previous_plan": "free", "plan": "enterprise"}
    assert asyncio.run(_authenticate(data_dir, acme["api_key"])) == (
        acme["tenant_id"], "acme", "enterprise")

    listed = run_pqkms("tenant", "list", *store)
    assert listed.returncode == 0, listed.stderr
    tenants = json.loads(listed.stdout)
    assert [(t["name"], t["tenant_id"], t["plan"], t["active_api_keys"], t["key_versions"])
            for t in tenants] == [("acme", acme["tenant_id"], "enterprise", 1, 0),
                                  ("umbrella", umbrella["tenant_id"], "pro", 1, 0)]
    assert all(t["created_at"].endswith("Z") for t in tenants)
    for key in (acme["api_key"], umbrella["api_key"]):
        assert key not in listed.stdout and key[:12] not in listed.stdout

    unknown = run_pqkms("tenant", "set-plan", "nobody", "--plan", "pro", *store)
    assert unknown.returncode == 1
    assert "no tenant named 'nobody'" in unknown.stderr
    assert run_pqkms("tenant", "set-plan", "acme", "--plan", "gold", *store).returncode == 2
