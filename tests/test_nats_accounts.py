"""The embedded nats-server's accounts (pqkms/nats_accounts.py) against the deployment's
``deploy/nats/accounts.conf``, and the configuration file they are written to."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from pqkms.nats_accounts import (
    ANONYMOUS_USER,
    OPERATION_SUBJECTS,
    WORKER_PUBLISH,
    StackCredentials,
    accounts_config,
)
from pqkms.nats_embedded import write_config

ACCOUNTS_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nats" / "accounts.conf"


def _quoted_list(text: str, start: str) -> list[str]:
    """The quoted strings of the first ``[...]`` after ``start`` (comments dropped)."""
    after = text[text.index(start):]
    body = after[after.index("[") + 1:after.index("]")]
    lines = (line.split("#", 1)[0] for line in body.splitlines())
    return [match for line in lines for match in re.findall(r'"([^"]+)"', line)]


def test_the_subject_lists_are_those_of_the_deployment_file() -> None:
    text = ACCOUNTS_CONF.read_text()

    assert _quoted_list(text, "PQKMS_OPERATIONS =") == list(OPERATION_SUBJECTS)
    assert _quoted_list(text, "PQKMS_WORKER_PERMISSIONS =") == list(WORKER_PUBLISH)


def test_connections_without_credentials_are_callers_only() -> None:
    config = accounts_config(StackCredentials.generate())
    accounts = config["accounts"]
    (anonymous,) = accounts["APP"]["users"]

    assert config["no_auth_user"] == ANONYMOUS_USER == anonymous["user"]
    assert anonymous["permissions"]["publish"] == {"allow": list(OPERATION_SUBJECTS)}
    assert anonymous["permissions"]["subscribe"]["allow"] == ["_INBOX.>"]
    # Only the workers' account has JetStream; callers import the operations alone.
    assert [name for name, account in accounts.items() if "jetstream" in account] == ["PQKMS"]
    for caller in ("APP", "BRIDGE"):
        imported = [entry["service"]["subject"] for entry in accounts[caller]["imports"]]
        assert imported == list(OPERATION_SUBJECTS)


def test_passwords_are_fresh_and_never_in_a_repr() -> None:
    first, second = StackCredentials.generate(), StackCredentials.generate()
    passwords = {first.worker_password, first.bridge_password, first.anonymous_password,
                 second.worker_password}

    assert len(passwords) == 4
    assert all(len(password) >= 40 for password in passwords)
    assert first.worker_password not in repr(first)


def test_the_configuration_is_private_and_holds_the_accounts(tmp_path: Path) -> None:
    credentials = StackCredentials.generate()
    path = tmp_path / "nats-server.conf"

    write_config(path, host="127.0.0.1", port=4222, store_dir=tmp_path / "js",
                 max_payload=1024, access=accounts_config(credentials))
    saved = credentials.save_worker_password(tmp_path)

    for private in (path, saved):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert saved.read_text().strip() == credentials.worker_password
    line = next(line for line in path.read_text().splitlines() if line.startswith("accounts:"))
    assert json.loads(line.removeprefix("accounts: "))["PQKMS"]["users"][0]["password"] == (
        credentials.worker_password)
    assert list(tmp_path.glob(".*")) == []  # no temporary file left behind
