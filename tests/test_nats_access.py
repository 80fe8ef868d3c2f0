"""The embedded nats-server's users and permissions (pqkms/nats_access.py) against the
deployment's ``deploy/nats/accounts.conf``, and the configuration file they go to."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

from pqkms.nats_access import (
    ANONYMOUS_USER,
    BRIDGE_INBOX_PREFIX,
    BRIDGE_USER,
    OPERATION_SUBJECTS,
    WORKER_INBOX_PREFIX,
    WORKER_PUBLISH,
    WORKER_USER,
    StackCredentials,
    access_config,
)
from pqkms.nats_embedded import write_config
from worker.config import Settings
from worker.nats_security import nats_security

ACCOUNTS_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nats" / "accounts.conf"


def _quoted_list(text: str, start: str) -> list[str]:
    """The quoted strings of the first ``[...]`` after ``start`` (comments dropped)."""
    after = text[text.index(start):]
    body = after[after.index("[") + 1:after.index("]")]
    lines = (line.split("#", 1)[0] for line in body.splitlines())
    return [match for line in lines for match in re.findall(r'"([^"]+)"', line)]


def _users(credentials: StackCredentials) -> dict[str, dict[str, Any]]:
    users = access_config(credentials)["authorization"]["users"]
    return {user["user"]: user for user in users}


def test_the_subjects_are_those_the_deployment_file_grants() -> None:
    text = ACCOUNTS_CONF.read_text()

    assert _quoted_list(text, "PQKMS_OPERATIONS =") == list(OPERATION_SUBJECTS)
    assert _quoted_list(text, "PQKMS_WORKER_PERMISSIONS =") == list(WORKER_PUBLISH)


def test_connections_without_credentials_are_callers_only() -> None:
    config = access_config(StackCredentials.generate())
    users = _users(StackCredentials.generate())
    anonymous = users[ANONYMOUS_USER]["permissions"]

    assert config["no_auth_user"] == ANONYMOUS_USER
    assert anonymous["publish"] == {"allow": list(OPERATION_SUBJECTS)}
    assert anonymous["subscribe"] == {"allow": ["_INBOX.>"], "deny": list(OPERATION_SUBJECTS)}


def test_workers_and_the_bridge_take_replies_where_callers_cannot_subscribe() -> None:
    users = _users(StackCredentials.generate())
    worker = users[WORKER_USER]["permissions"]
    bridge = users[BRIDGE_USER]["permissions"]

    assert worker["subscribe"]["allow"] == ["pqkms.v1.> pqkms-workers",
                                            f"{WORKER_INBOX_PREFIX}.>"]
    assert worker["allow_responses"] is True
    assert bridge["subscribe"]["allow"] == [f"{BRIDGE_INBOX_PREFIX}.>"]
    assert bridge["publish"] == users[ANONYMOUS_USER]["permissions"]["publish"]
    for prefix in (WORKER_INBOX_PREFIX, BRIDGE_INBOX_PREFIX):
        assert not prefix.startswith("_INBOX.") and prefix.split(".")[0] != "_INBOX"


def test_each_child_is_told_its_login_and_inbox() -> None:
    credentials = StackCredentials.generate()
    for env, user, prefix in ((credentials.worker_env(), WORKER_USER, WORKER_INBOX_PREFIX),
                              (credentials.bridge_env(), BRIDGE_USER, BRIDGE_INBOX_PREFIX)):
        settings = Settings.model_validate({
            "nats_user": env["PQKMS_NATS_USER"], "nats_password": env["PQKMS_NATS_PASSWORD"],
            "nats_inbox_prefix": env["PQKMS_NATS_INBOX_PREFIX"]})
        options = nats_security(settings).nats_py_options()
        assert (options["user"], options["inbox_prefix"]) == (user, prefix)
    assert "inbox_prefix" not in nats_security(Settings()).nats_py_options()


def test_passwords_are_fresh_and_never_in_a_repr() -> None:
    first, second = StackCredentials.generate(), StackCredentials.generate()
    passwords = {first.worker_password, first.bridge_password, first.anonymous_password,
                 second.worker_password}

    assert len(passwords) == 4
    assert all(len(password) >= 40 for password in passwords)
    assert first.worker_password not in repr(first)


def test_the_configuration_is_private_and_holds_the_users(tmp_path: Path) -> None:
    credentials = StackCredentials.generate()
    path = tmp_path / "nats-server.conf"

    write_config(path, host="127.0.0.1", port=4222, store_dir=tmp_path / "js",
                 max_payload=1024, access=access_config(credentials), encrypted_store=True)
    saved = credentials.save_worker_password(tmp_path)

    for private in (path, saved):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert saved.read_text().strip() == credentials.worker_password
    text = path.read_text()
    line = next(line for line in text.splitlines() if line.startswith("authorization:"))
    users = json.loads(line.removeprefix("authorization: "))["users"]
    assert users[0]["password"] == credentials.worker_password
    # The store's key is not in the file: the server reads it from its environment.
    assert "  key: $PQKMS_JETSTREAM_STORE_KEY" in text.splitlines()
    assert list(tmp_path.glob(".*")) == []  # no temporary file left behind
