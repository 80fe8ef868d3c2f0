"""Store commands on a database that is not there, not theirs, or not supported.

An operations review found that ``db init`` left a useless new master key behind on a
database that already had one, that reading commands and the worker created empty
databases (and ``-keystate`` files) at a mistyped SQLite path, and that a ``mysql://``
URL printed a 34-line traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pqkms.nats_embedded import find_free_port
from tests.cli.processes import clean_env, run_pqkms

pytestmark = pytest.mark.long

# Nothing listens here (the port range these tests may use): a worker that got as far
# as connecting would fail there, after the files it must not create.
_NATS_URL = "nats://127.0.0.1:9"  # no server below port 1024 here, nor ephemeral
_SUPPORTED = ("sqlite+aiosqlite", "postgresql+asyncpg")


def _init(data_dir: Path) -> None:
    result = run_pqkms("db", "init", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr


def _files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_db_init_without_the_key_file_of_a_keyed_database_creates_no_key(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    _init(data_dir)
    (data_dir / "master.key").unlink()  # a new host, the key file not copied yet
    elsewhere = tmp_path / "new-host" / "master.key"

    same_dir = run_pqkms("db", "init", "--data-dir", str(data_dir))
    by_url = run_pqkms("db", "init", "--database-url", f"sqlite:///{data_dir / 'pqkms.db'}",
                       "--master-key-file", str(elsewhere))
    # tenant create makes a key on the default layout too: not for a keyed database.
    tenant = run_pqkms("tenant", "create", "acme", "--plan", "pro", "--data-dir", str(data_dir))

    for result, command in ((same_dir, "db"), (by_url, "db"), (tenant, "tenant")):
        assert result.returncode == 1
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(
            f"pqkms {command}: this database already has a master key (kek id ")
        assert "No new key was created" in line
    assert not (data_dir / "master.key").exists()
    assert not elsewhere.parent.exists()


def test_db_init_still_creates_the_key_of_a_new_database(tmp_path: Path) -> None:
    # An empty schema (db upgrade, compose's init) records no key: init may add one.
    data_dir = tmp_path / "data"
    upgraded = run_pqkms("db", "upgrade", "--data-dir", str(data_dir))
    assert upgraded.returncode == 0, upgraded.stderr
    assert not (data_dir / "master.key").exists()

    result = run_pqkms("db", "init", "--data-dir", str(data_dir))

    assert result.returncode == 0, result.stderr
    assert (data_dir / "master.key").is_file()


@pytest.mark.parametrize("command", [
    ["audit", "verify", "--no-stream"],
    ["tenant", "api-key", "list", "acme"],
    ["tenant", "rotation-policy", "show", "acme"],
])
def test_reading_commands_refuse_a_missing_data_dir_and_create_nothing(
    tmp_path: Path, command: list[str],
) -> None:
    typo = tmp_path / "pqkms-dta"

    result = run_pqkms(*command, "--data-dir", str(typo))

    assert result.returncode == 1
    # The missing database, or first the missing master key of the commands that read it.
    [line] = result.stderr.splitlines()
    assert f"no SQLite database at {typo / 'pqkms.db'}" in line or (
        f"Master key file {typo / 'master.key'} does not exist" in line)
    assert not typo.exists()


@pytest.mark.parametrize("command", [
    ["audit", "verify", "--no-stream"],
    ["tenant", "api-key", "add", "acme"],
    ["tenant", "create", "acme", "--plan", "free"],
    ["master-key", "status"],
])
def test_reading_commands_refuse_a_mistyped_database_url_and_create_nothing(
    tmp_path: Path, command: list[str],
) -> None:
    data_dir = tmp_path / "data"
    _init(data_dir)
    before = _files_under(tmp_path)
    typo = data_dir / "pqkm.db"

    result = run_pqkms(*command, "--data-dir", str(data_dir),
                       "--database-url", f"sqlite:///{typo}")

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert f"no SQLite database at {typo}" in line
    assert _files_under(tmp_path) == before


def test_a_worker_refuses_a_missing_sqlite_file_with_one_worker_failed_line(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    _init(data_dir)
    before = _files_under(tmp_path)
    typo = tmp_path / "nonexist.db"

    result = run_pqkms("worker", "--nats-url", _NATS_URL, "--data-dir", str(data_dir),
                       "--database-url", f"sqlite:///{typo}", timeout=30)

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "worker_failed"
    assert event["kind"] == "DatabaseNotFound"
    assert f"no SQLite database at {typo}" in event["error"]
    assert _files_under(tmp_path) == before  # no nonexist.db, no nonexist.db-keystate


def test_python_m_worker_refuses_a_missing_sqlite_file_too(tmp_path: Path) -> None:
    # As pqkms up starts its workers: the store itself refuses, before connecting.
    data_dir = tmp_path / "data"
    _init(data_dir)
    before = _files_under(tmp_path)
    typo = tmp_path / "nonexist.db"
    result = subprocess.run(
        [sys.executable, "-m", "worker"], capture_output=True, text=True, timeout=30,
        env=clean_env(PQKMS_NATS_URL=_NATS_URL, PQKMS_DATA_DIR=str(data_dir),
                      PQKMS_DATABASE_URL=f"sqlite:///{typo}", PQKMS_LOG_JSON="true"),
        check=False,
    )
    assert result.returncode == 1
    failed = [json.loads(line) for line in result.stderr.splitlines()
              if '"worker_failed"' in line]
    assert [event["kind"] for event in failed] == ["DatabaseNotFound"]
    assert _files_under(tmp_path) == before


@pytest.mark.parametrize("command", [
    ["db", "upgrade"],
    ["db", "init"],
    ["db", "current"],
    ["tenant", "api-key", "list", "acme"],
    ["audit", "verify", "--no-stream"],
    ["master-key", "status"],
    ["up", "--nats-port", "{free}", "--http-port", "{free}"],  # (refused before starting)
])
def test_an_unsupported_database_url_is_one_line_naming_the_supported_ones(
    tmp_path: Path, command: list[str],
) -> None:
    data_dir = tmp_path / "data"
    _init(data_dir)  # the master key is there: the URL is what is wrong
    # Ports that are free now (a fixed one may be some connection's ephemeral port).
    command = [str(find_free_port()) if part == "{free}" else part for part in command]

    result = run_pqkms(*command, "--data-dir", str(data_dir),
                       "--database-url", "mysql://pqkms:s3cret@db.example/pqkms")

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "unsupported database URL scheme 'mysql'" in line
    assert all(scheme in line for scheme in _SUPPORTED)
    assert "s3cret" not in line


def test_a_worker_on_an_unsupported_database_url_logs_one_worker_failed_line(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    _init(data_dir)
    env = clean_env(PQKMS_DATABASE_URL="mysql://pqkms:s3cret@db.example/pqkms",
                    PQKMS_NATS_URL=_NATS_URL, PQKMS_DATA_DIR=str(data_dir))

    result = run_pqkms("worker", env=env, timeout=30)

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "worker_failed"
    assert all(scheme in event["error"] for scheme in _SUPPORTED)
    assert "s3cret" not in line


def test_the_postgres_shorthand_is_taken_for_postgresql_asyncpg(tmp_path: Path) -> None:
    # Nothing answers on this port: the point is that the URL is tried, not refused.
    result = run_pqkms("db", "current", "--data-dir", str(tmp_path / "data"),
                       "--database-url", "postgres://pqkms@127.0.0.1:9/pqkms")

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("pqkms db: cannot use the database postgres")
    assert "unsupported" not in line
