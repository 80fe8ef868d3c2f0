"""``pqkms batch`` takes its API key the safe ways only; help texts say what commands do.

A review found ``batch --api-key KEY`` put the key where ``ps`` shows it to every user
(``tenant api-key revoke`` refuses that), help texts that missed a sub-command or an
argument, and a ``--master-key-file`` option on two commands that never read the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.processes import clean_env, run_pqkms

_KEY = "qph_batch_key_never_on_a_command_line"


def _batch(tmp_path: Path, *extra: str, env: dict[str, str] | None = None,
           stdin: str | None = None) -> tuple[int, str]:
    """``batch encrypt`` of an input file that does not exist: the command reads its
    API key first, then stops at the input before connecting anywhere."""
    result = run_pqkms("batch", "encrypt", "--in", str(tmp_path / "missing.jsonl"),
                       "--out", str(tmp_path / "out.jsonl"), "--key-version", "1",
                       "--nats-url", "nats://127.0.0.1:9", *extra,
                       env=env, stdin=stdin, timeout=30)
    assert _KEY not in result.stdout + result.stderr
    return result.returncode, result.stderr


def test_batch_refuses_an_api_key_on_the_command_line(tmp_path: Path) -> None:
    code, stderr = _batch(tmp_path, "--api-key", _KEY)

    assert code == 2
    assert "--api-key is refused" in stderr
    assert "PQKMS_API_KEY" in stderr and "--api-key-file" in stderr


@pytest.mark.parametrize("how", ["file", "stdin", "env file", "env"])
def test_batch_reads_the_api_key_from_a_file_stdin_or_the_environment(
    tmp_path: Path, how: str,
) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text(_KEY + "\n")
    extra: tuple[str, ...] = ()
    env, stdin = clean_env(), None
    if how == "file":
        extra = ("--api-key-file", str(key_file))
    elif how == "stdin":
        extra, stdin = ("--api-key-file", "-"), _KEY + "\n"
    elif how == "env file":
        env = clean_env(PQKMS_API_KEY_FILE=str(key_file))
    else:
        env = clean_env(PQKMS_API_KEY=_KEY)

    code, stderr = _batch(tmp_path, *extra, env=env, stdin=stdin)

    # Past the API key, stopped at the input: the key was found.
    assert code == 1
    assert stderr.splitlines() == [f"pqkms batch: no such input file: {tmp_path / 'missing.jsonl'}"]


def test_the_api_key_file_gives_its_first_line(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pqkms.cli import _batch_api_key  # (here: the module's other tests need no import)

    monkeypatch.setenv("PQKMS_API_KEY", "qph_the_variable_loses_to_the_option")
    key_file = tmp_path / "api.key"
    key_file.write_text(f"  {_KEY}  \nanything after the first line\n")

    assert _batch_api_key(str(key_file)) == _KEY


def test_batch_without_an_api_key_names_the_safe_ways(tmp_path: Path) -> None:
    code, stderr = _batch(tmp_path)

    assert code == 1
    [line] = stderr.splitlines()
    assert "PQKMS_API_KEY" in line and "--api-key-file" in line
    assert "--api-key or" not in line


def test_batch_refuses_an_empty_or_unreadable_api_key_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n")

    empty_code, empty_stderr = _batch(tmp_path, "--api-key-file", str(empty))
    missing_code, missing_stderr = _batch(tmp_path, "--api-key-file", str(tmp_path / "nope"))

    assert (empty_code, empty_stderr) == (1, f"pqkms batch: the API key file {empty} is empty\n")
    assert missing_code == 1
    assert missing_stderr.startswith(f"pqkms batch: cannot read the API key file {tmp_path}/nope")


def test_tenant_help_names_every_api_key_action() -> None:
    result = run_pqkms("tenant", "--help")

    assert result.returncode == 0
    api_key_help = result.stdout.split("api-key", 1)[1].split("rotation-policy", 1)[0]
    assert all(action in api_key_help for action in ("add", "list", "revoke"))


def test_tenant_create_help_says_what_name_is() -> None:
    result = run_pqkms("tenant", "create", "--help")

    assert result.returncode == 0
    # "  NAME  help" in the list of positional arguments (not the usage's "NAME").
    [name_line] = [line for line in result.stdout.splitlines() if line.startswith("  NAME")]
    assert "tenant name" in name_line


@pytest.mark.parametrize("command", [["db", "current"], ["audit", "verify"]])
def test_commands_that_never_read_the_master_key_do_not_offer_it(command: list[str]) -> None:
    help_text = run_pqkms(*command, "--help")
    given = run_pqkms(*command, "--master-key-file", "master.key")

    assert help_text.returncode == 0
    assert "--master-key-file" not in help_text.stdout
    # Scripts that pass it still run (no usage error), with a warning.
    assert given.returncode != 2
    assert "--master-key-file is not used by this command" in given.stderr
