"""The ``pqkms`` command line.

Every option can also come from the environment (``PQKMS_DATA_DIR``, ``PQKMS_HTTP_PORT``,
``PQKMS_NATS_PORT``, ``PQKMS_WORKERS``…); a command-line option wins over the
environment, which wins over the default.

Exit status: 0 on success (and on a clean stop of ``up``), 1 on a user-facing error
(port taken, duplicate tenant, wrong master key…), 2 on a usage error; ``batch`` also
3 when its output is complete but some items failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import structlog
from pydantic import ValidationError

from schemas.algorithms import Algorithm, Plan
from worker.config import Settings

__all__ = ["build_parser", "main"]

_PROG = "pqkms"
T = TypeVar("T")
_PASSWORD_FILE_ENV = "PQKMS_DATABASE_PASSWORD_FILE"  # noqa: S105 - a variable name


class CommandError(Exception):
    """A failure reported as one line on stderr with exit status 1."""


# -- parser -------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _rotation_period(text: str) -> int:
    from schemas.rotation_policy import parse_rotation_period

    try:
        return parse_rotation_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _SecretRefusedOnCommandLine(argparse.Action):
    """An option that would take a secret on the command line, where ``ps`` shows it to
    every user of the machine: a usage error naming the safe ways (never the value)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None,
                 ) -> NoReturn:
        parser.error(f"{option_string} is refused: a command line is visible to every user "
                     "in `ps`; give the API key in PQKMS_API_KEY, in a file (--api-key-file "
                     "FILE, '-' for stdin), or type it at the prompt")


def _add_client_nats_options(parser: argparse.ArgumentParser) -> None:
    """Where a command that talks to running workers finds NATS (see _client_settings)."""
    parser.add_argument("--nats-url", metavar="URL",
                        help="comma-separated NATS servers (env PQKMS_NATS_URL; default: "
                        "the server of a pqkms up of --data-dir, else nats://127.0.0.1:4222)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory of a running pqkms up (env PQKMS_DATA_DIR; "
                        "default .pqkms)")


def _add_store_options(parser: argparse.ArgumentParser, *, master_key: bool = True) -> None:
    """The store options; ``master_key=False`` for a command that never reads the key
    (offering the option would tell an auditor the master key is needed)."""
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help="SQLite database, master key, logs, NATS store (env PQKMS_DATA_DIR; "
        "default .pqkms)"
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy URL, e.g. postgresql+asyncpg://… (env PQKMS_DATABASE_URL; "
        "default: SQLite in the data dir)",
    )
    if master_key:
        parser.add_argument(
            "--master-key-file",
            metavar="FILE",
            help="master key file (env PQKMS_MASTER_KEY_FILE; default: DIR/master.key)",
        )
    else:
        # Offered once, never read: still accepted (with a warning, see main), so a cron
        # line or monitor written for it does not turn into a usage error that reads
        # like a failed check.
        parser.add_argument("--master-key-file", dest="unused_master_key_file",
                            help=argparse.SUPPRESS)
    parser.add_argument(
        "--database-password-file",
        metavar="FILE",
        help="password for the database URL, read from a file such as a container "
        "secret (env PQKMS_DATABASE_PASSWORD_FILE)",
    )


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-cert", metavar="FILE",
        help="serve HTTPS (TLS 1.3) with this PEM certificate chain (env "
        "PQKMS_HTTP_TLS_CERT_FILE); without it, plain HTTP on loopback only, unless "
        "PQKMS_HTTP_ALLOW_PLAIN=true (a TLS proxy in front)",
    )
    parser.add_argument(
        "--tls-key", metavar="FILE",
        help="the certificate's private key, PEM (env PQKMS_HTTP_TLS_KEY_FILE)",
    )


def _add_master_key_commands(commands: Any) -> None:
    master = commands.add_parser(
        "master-key",
        help="master key (KEK) rotation: status, add, rotate, rewrap, prune",
        description="Rotate the master key while workers run (see docs/deploy.md, "
        "'Master key rotation'). Every action prints one JSON object.",
    )
    actions = master.add_subparsers(dest="master_key_command", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="the keyring's keys, which is primary, key versions under each"
    )
    add = actions.add_parser(
        "add",
        help="stage a new key as 'next': copy the keyring to every machine, then rotate",
    )
    rotate = actions.add_parser(
        "rotate",
        help="make a new key primary and re-wrap every stored seed under it",
        description="The new primary is --kek-id, else the key staged with 'add', else a "
        "new key. Exit status 1 if key versions remain under older keys ('rewrap' "
        "finishes the job).",
    )
    rotate.add_argument("--kek-id", metavar="ID", help="rotate to this key of the keyring")
    rewrap = actions.add_parser(
        "rewrap",
        help="re-wrap what is not under the current primary (finish a rotation)",
        description="Exit status 1 if key versions remain under older keys.",
    )
    for action in (rotate, rewrap):
        action.add_argument("--batch-size", type=_positive_int, default=100, metavar="N",
                            help="key versions re-wrapped per transaction (default 100)")
        action.add_argument(
            "--adopt-primary", metavar="ID",
            help="a database restored from before a rotation: take this keyring's primary "
            "ID for it (the refusal names it; docs/deploy.md, Master key rotation)")
        action.add_argument("--retire-old", action="store_true",
                            help="then drop the keys no key version uses from the keyring")
    prune = actions.add_parser(
        "prune", help="drop previous keys no key version uses from the keyring"
    )
    prune.add_argument("--kek-id", dest="kek_ids", action="append", metavar="ID",
                       help="drop exactly this key (repeatable); refused while rows use it")
    for action in (status, add, rotate, rewrap, prune):
        _add_store_options(action)


def _add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the audit log: verify its hash chains, "
                                "archive a past period")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify",
        help="check every audit chain in the database (and against the PQKMS_AUDIT stream)",
        description="Exit 0 when every chain is intact, 1 with one line per problem "
        "(chain, seq, what is wrong) otherwise. The stream cross-check runs when NATS "
        "answers and the stream exists (see docs/audit.md).",
    )
    _add_store_options(verify, master_key=False)
    verify.add_argument("--nats-url", metavar="URL",
                        help="comma-separated NATS servers (env PQKMS_NATS_URL)")
    verify.add_argument("--no-stream", action="store_true",
                        help="check the database only, without the stream cross-check")
    verify.add_argument("--since", metavar="TIME",
                        help="judge only chains with records from TIME on (ISO 8601, UTC "
                        "unless it has an offset) and key versions created from then on, "
                        "after a gap was examined and accepted (docs/audit.md)")
    archive = actions.add_parser(
        "archive",
        help="move the records of a past period to a file, after verifying the log",
        description="Verify the audit log against the PQKMS_AUDIT stream (as verify "
        "does), then move every record recorded before TIME to FILE (JSON Lines, gzip if "
        "FILE ends in .gz), record the run in the log and the stream, and delete the "
        "records from the database; each chain keeps an anchor, so verify goes on judging "
        "what remains. Nothing is archived when verify finds an error or the stream cannot "
        "be reached (exit 1). An open chain keeps its last record. See docs/audit.md, "
        "'Archiving'.",
    )
    archive.add_argument("--before", metavar="TIME", required=True,
                         help="archive records recorded before TIME (ISO 8601, UTC unless "
                         "it has an offset)")
    archive.add_argument("--out", metavar="FILE", required=True, type=Path,
                         help="the archive file to create (never overwritten)")
    _add_store_options(archive, master_key=False)
    archive.add_argument("--nats-url", metavar="URL",
                         help="comma-separated NATS servers (env PQKMS_NATS_URL)")
    archive.add_argument("--since", metavar="TIME",
                         help="as for verify: a gap before TIME was examined and accepted")
    check = actions.add_parser(
        "verify-archive",
        help="check archive files (oldest first), and against the database",
        description="Exit 0 when every record of the files hashes and links, and each "
        "chain's anchor in the database is the record of the files it names; 1 with one "
        "line per problem otherwise.",
    )
    check.add_argument("files", metavar="FILE", nargs="+", type=Path,
                       help="archive files, oldest first")
    _add_store_options(check, master_key=False)
    check.add_argument("--no-database", action="store_true",
                       help="check the files alone")


def _actions(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             dest: str, *, help: str, description: str,
             ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command ``name`` whose own sub-commands (ACTION) are added to what it returns."""
    command = commands.add_parser(name, help=help, description=description)
    return command.add_subparsers(dest=dest, metavar="ACTION", required=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``pqkms`` subcommand."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="pqkms: post-quantum key management over NATS and HTTP.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more supervisor output")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up",
        help="run nats-server, workers and the HTTP bridge on this machine",
        description="Run the whole stack on one machine until Ctrl-C.",
    )
    _add_store_options(up)
    up.add_argument("--http-host", metavar="HOST", help="bridge address (env PQKMS_HTTP_HOST)")
    up.add_argument("--http-port", type=_port, metavar="N",
                    help="bridge port (env PQKMS_HTTP_PORT; default 8000)")
    _add_tls_options(up)
    up.add_argument("--nats-port", type=_port, metavar="N",
                    help="NATS port (env PQKMS_NATS_PORT; default 4222, or a free one "
                    "when 4222 is taken)")
    up.add_argument(
        "--workers", type=_positive_int, metavar="K",
        help="worker processes (env PQKMS_WORKERS; default 2)"
    )
    up.add_argument(
        "--no-bridge", action="store_true", help="NATS only: do not start the HTTP bridge"
    )
    up.add_argument(
        "--start-timeout", type=float, metavar="SECONDS", help="give up starting after (60)"
    )

    tenant = commands.add_parser("tenant", help="manage tenants")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)
    create = tenant_commands.add_parser(
        "create",
        help="create a tenant and print its first API key (shown once)",
        description="Create a tenant; prints one JSON object with its API key.",
    )
    create.add_argument("name", metavar="NAME", help="tenant name (unique)")
    create.add_argument(
        "--plan", required=True, choices=[plan.value for plan in Plan], help="tenant plan"
    )
    _add_store_options(create)
    tenant_list = tenant_commands.add_parser(
        "list", help="every tenant as JSON: id, name, plan, created_at, active_api_keys, "
        "key_versions (never a key)")
    set_plan = tenant_commands.add_parser(
        "set-plan", help="move a tenant to another plan; prints JSON",
        description="Change a tenant's plan: its rate limit, burst and number of key "
        "versions. Workers apply it within 10 s. Key versions over a lower plan's limit "
        "are kept; only new ones are refused.")
    set_plan.add_argument("name", metavar="NAME", help="tenant name")
    set_plan.add_argument("--plan", required=True, choices=[plan.value for plan in Plan],
                          help="the new plan")
    for action in (tenant_list, set_plan):
        _add_store_options(action)
    api_key_commands = _actions(
        tenant_commands, "api-key", "api_key_command",
        help="a tenant's API keys: add another, list them, revoke one or all",
        description="Rotate a tenant's API key: add a new one, move the callers to it, "
        "then revoke the old one. Workers stop accepting a revoked key within 10 s.",
    )
    api_key_add = api_key_commands.add_parser(
        "add", help="issue another API key; prints JSON with it (shown once)")
    api_key_list = api_key_commands.add_parser(
        "list", help="the tenant's API keys: prefix, created_at, revoked_at (never a key)")
    api_key_revoke = api_key_commands.add_parser(
        "revoke", help="revoke the API key read from stdin (never from the command line), "
        "or by --prefix, or --all")
    for action in (api_key_add, api_key_list, api_key_revoke):
        action.add_argument("name", metavar="NAME", help="tenant name")
        _add_store_options(action)
    which = api_key_revoke.add_mutually_exclusive_group()
    which.add_argument("--prefix", metavar="PREFIX",
                       help="revoke the key with this prefix, as `list` shows it (a leaked "
                       "key whose value you no longer hold)")
    which.add_argument("--all", action="store_true",
                       help="revoke every key of the tenant (an incident: add a new one "
                       "first if its callers must go on)")
    policy_commands = _actions(
        tenant_commands, "rotation-policy", "policy_command",
        help="scheduled key rotation of a tenant: set, show, clear",
        description="Workers rotate a tenant's active version of an algorithm once it is "
        "older than the period (checked every PQKMS_ROTATION_CHECK_SECONDS).",
    )
    algorithms = [algorithm.value for algorithm in Algorithm]
    policy_set = policy_commands.add_parser("set", help="rotate every PERIOD; prints JSON")
    policy_set.add_argument("--period", required=True, type=_rotation_period, metavar="PERIOD",
                            help="e.g. 90d, 12h, 30m, 3600s")
    policy_show = policy_commands.add_parser("show", help="print the policies as JSON")
    policy_clear = policy_commands.add_parser("clear", help="stop scheduled rotation")
    for action in (policy_set, policy_show, policy_clear):
        action.add_argument("name", metavar="NAME", help="tenant name")
        if action is not policy_show:
            action.add_argument("--algorithm", required=True, choices=algorithms)
        _add_store_options(action)

    database = commands.add_parser("db", help="database setup")
    db_commands = database.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    init = db_commands.add_parser(
        "init",
        help="create the schema and record the master key's check value, then exit",
        description="Idempotent; run once before the first worker (compose's init service).",
    )
    _add_store_options(init)
    upgrade = db_commands.add_parser(
        "upgrade",
        help="apply pending schema migrations (and check the master key if one is available)",
        description="Idempotent; adopts a database created before migrations. Workers do "
        "not upgrade the schema themselves: run this before starting a new pqkms version.",
    )
    _add_store_options(upgrade)
    current = db_commands.add_parser(
        "current", help="print the database's schema revision and whether it is at head"
    )
    _add_store_options(current, master_key=False)
    backup = db_commands.add_parser(
        "backup",
        help="write a consistent, checked copy of the SQLite database while it serves",
        description="SQLite only (VACUUM INTO, then SQLite's integrity check); PostgreSQL: "
        "pg_dump -Fc. Never overwrites FILE. The copy needs the master keys whose ids it "
        "prints: keep the master key file of the same moment with it (docs/deploy.md, "
        "Backup and restore).",
    )
    backup.add_argument("file", metavar="FILE", type=Path, help="the copy to write")
    _add_store_options(backup, master_key=False)

    _add_master_key_commands(commands)
    _add_audit_commands(commands)

    worker = commands.add_parser(
        "worker", help="run one worker process",
        description="One worker: joins the NATS queue group and serves every operation "
        "until SIGINT/SIGTERM. NATS credentials and TLS come from PQKMS_NATS_* variables "
        "(docs/deploy.md).")
    worker.add_argument("--nats-url", metavar="URL",
                        help="comma-separated NATS servers (env PQKMS_NATS_URL)")
    _add_store_options(worker)

    bridge = commands.add_parser(
        "bridge", help="run the HTTP bridge",
        description="The Qpher REST API over HTTP, answered by the workers over NATS; "
        "it holds no key and no database.")
    bridge.add_argument("--nats-url", metavar="URL",
                        help="comma-separated NATS servers (env PQKMS_NATS_URL)")
    bridge.add_argument("--http-host", metavar="HOST",
                        help="listen address (env PQKMS_HTTP_HOST; default 127.0.0.1)")
    bridge.add_argument("--http-port", type=_port, metavar="N",
                        help="listen port (env PQKMS_HTTP_PORT; default 8000)")
    _add_tls_options(bridge)

    health = commands.add_parser(
        "health",
        help="exit 0 when the service answers (container healthcheck)",
        description="Without --http-url: a worker must answer a health ping over NATS.",
    )
    _add_client_nats_options(health)
    health.add_argument("--http-url", metavar="URL", help="check this /healthz URL instead")
    health.add_argument(
        "--http-cert", metavar="FILE",
        help="for an https URL, accept exactly this certificate, whatever host it names "
        "(default: PQKMS_HTTP_TLS_CERT_FILE, the bridge's own; without either, the "
        "system's CAs)")
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")

    batch = commands.add_parser(
        "batch",
        help="run a file of items through a durable job (resumable)",
        description="Stream a JSON Lines file (or one value per line) through a durable "
        "JetStream job; results are written in input order as JSON Lines. Interrupted "
        "(Ctrl-C)? Run the same command again: finished chunks are not redone.",
        epilog="Exit status: 0 every item ok (for verify: every signature valid); "
        "3 the output is complete but some items failed (an \"error\" "
        "line) or, for verify, did not verify (\"valid\": false); 1 the command failed "
        "(nothing submitted for an input line that is not an item or is too large for "
        "one message); 130 interrupted (run it again to resume).",
    )
    batch.add_argument("operation", choices=["encrypt", "decrypt", "sign", "verify"])
    batch.add_argument("--in", dest="input", required=True, metavar="FILE",
                       help="JSON Lines, one item object per line (or see --raw-lines)")
    batch.add_argument("--out", dest="output", required=True, metavar="FILE",
                       help="results, JSON Lines, one per item in input order")
    batch.add_argument("--key-version", type=_positive_int, required=True, metavar="N")
    batch.add_argument("--algorithm", metavar="A", help="default algorithm for items")
    _add_client_nats_options(batch)
    batch.add_argument("--api-key-file", metavar="FILE",
                       help="read the API key from FILE's first line ('-': stdin; env "
                       "PQKMS_API_KEY_FILE); else PQKMS_API_KEY; else it is asked for at a "
                       "terminal. Never on the command line, where ps shows it")
    batch.add_argument("--api-key", action=_SecretRefusedOnCommandLine, help=argparse.SUPPRESS)
    batch.add_argument("--chunk-size", type=_positive_int, default=500, metavar="N",
                       help="items per job chunk (default 500, at most 1000)")
    batch.add_argument("--job-id", metavar="ID", help="job id (default: a random one)")
    batch.add_argument("--keep-job", action="store_true",
                       help="leave the job and its results in JetStream once the output is "
                       "complete (default: the job is deleted then; its results, decrypted "
                       "plaintexts included, would stay until PQKMS_JOB_RETENTION_HOURS)")
    batch.add_argument("--raw-lines", action="store_true",
                       help="one value per line: its bytes are the plaintext / message "
                       "(base64-encoded for you); for decrypt, a base64 ciphertext")
    return parser


# -- settings -----------------------------------------------------------------------------

# argparse destination → Settings field.
_SETTING_OPTIONS = {
    "data_dir": "data_dir",
    "database_url": "database_url",
    "master_key_file": "master_key_file",
    "nats_url": "nats_url",
    "http_host": "http_host",
    "http_port": "http_port",
    "tls_cert": "http_tls_cert_file",
    "tls_key": "http_tls_key_file",
    "nats_port": "nats_port",
    "workers": "workers",
    "start_timeout": "start_timeout_seconds",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Options given on the command line, as Settings keyword arguments."""
    given: dict[str, Any] = {}
    for dest, name in _SETTING_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is not None:
            given[name] = value
    if getattr(args, "no_bridge", False):
        given["bridge"] = False
    return given


def _settings(cls: type[Settings], args: argparse.Namespace) -> Any:
    # Keyword arguments take precedence over PQKMS_* variables in pydantic-settings.
    try:
        settings = cls(**_overrides(args))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise CommandError(f"invalid settings: {problems}") from None
    if not hasattr(args, "database_password_file"):
        return settings  # this command does not touch the database
    password_file = args.database_password_file or os.environ.get(_PASSWORD_FILE_ENV)
    if password_file:
        settings = _with_database_password(settings, Path(password_file))
    return settings


def _with_database_password(settings: Settings, password_file: Path) -> Settings:
    """Settings whose database URL carries the password read from ``password_file``."""
    from pqkms.admin import database_url_with_password

    if not settings.database_url:
        raise CommandError(f"{_PASSWORD_FILE_ENV} / --database-password-file needs a database URL")
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(
            f"cannot read the database password file {password_file}: {exc}"
        ) from None
    if not password:
        raise CommandError(f"the database password file {password_file} is empty")
    url = database_url_with_password(settings.database_url, password)
    return settings.model_copy(update={"database_url": url})


# -- commands -----------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    from pqkms.stack import StackError, StackSettings, run_stack

    settings: StackSettings = _settings(StackSettings, args)
    try:
        return run_stack(settings)
    except StackError as exc:
        raise CommandError(str(exc)) from None


def _store_errors() -> tuple[type[Exception], ...]:
    from worker.store import MasterKeyError, MasterKeyMismatch
    from worker.store.database import DatabaseNotFound, UnsupportedDatabaseURL
    from worker.store.migrations import SchemaError

    return (MasterKeyError, MasterKeyMismatch, SchemaError, DatabaseNotFound,
            UnsupportedDatabaseURL)


def _run_on_store(settings: Settings, work: Coroutine[Any, Any, T], *,
                  user_errors: tuple[type[Exception], ...] = ()) -> T:
    """Run one command's work on the store; its failures, ``user_errors`` and the
    store's and the database's, become the one line of a :class:`CommandError`."""
    from pqkms.admin import database_errors, describe_database_failure

    try:
        return asyncio.run(work)
    except (*user_errors, *_store_errors()) as exc:
        raise CommandError(str(exc)) from None
    except database_errors() as exc:
        raise CommandError(describe_database_failure(settings, exc)) from None


def _cmd_rotation_policy(args: argparse.Namespace) -> int:
    from pqkms.admin import clear_rotation_policy, rotation_policies, set_rotation_policy

    settings: Settings = _settings(Settings, args)
    user_errors = (LookupError, ValueError)
    output: Any
    if args.policy_command == "set":
        output = _run_on_store(settings, set_rotation_policy(
            settings, args.name, Algorithm(args.algorithm), args.period), user_errors=user_errors)
    elif args.policy_command == "show":
        output = _run_on_store(settings, rotation_policies(settings, args.name),
                               user_errors=user_errors)
    else:
        cleared = _run_on_store(settings, clear_rotation_policy(
            settings, args.name, Algorithm(args.algorithm)), user_errors=user_errors)
        output = {"tenant": args.name, "algorithm": args.algorithm, "cleared": cleared}
    print(json.dumps(output), flush=True)
    return 0


def _cmd_tenant_api_key(args: argparse.Namespace) -> int:
    from pqkms.admin import add_api_key, list_api_keys, revoke_api_key

    settings: Settings = _settings(Settings, args)
    output: Any
    if args.api_key_command == "add":
        output = _run_on_store(settings, add_api_key(settings, args.name),
                               user_errors=(LookupError,))
    elif args.api_key_command == "list":
        output = _run_on_store(settings, list_api_keys(settings, args.name),
                               user_errors=(LookupError,))
    elif args.prefix is not None or args.all:
        output = _revoke_keys_by_prefix(settings, args.name, args.prefix)
    else:
        revoked_key = _api_key_from_stdin()
        if not _run_on_store(settings, revoke_api_key(settings, args.name, revoked_key),
                             user_errors=(LookupError,)):
            raise CommandError(f"that API key does not belong to tenant {args.name!r}")
        output = {"name": args.name, "revoked": True}
    print(json.dumps(output), flush=True)
    return 0


_API_KEY_PREFIX_CHARS = 12  # worker.store.repository keeps the first 12 of a key


def _revoke_keys_by_prefix(settings: Settings, name: str, prefix: str | None) -> dict[str, Any]:
    from pqkms.admin import revoke_api_keys

    if prefix is not None and len(prefix) != _API_KEY_PREFIX_CHARS:
        # Never echoed: it may be a whole key pasted here by mistake.
        raise CommandError(f"--prefix takes the {_API_KEY_PREFIX_CHARS} characters `pqkms "
                           "tenant api-key list` shows; revoke a key you hold by giving it "
                           "on stdin instead")
    revoked: int = _run_on_store(settings, revoke_api_keys(settings, name, prefix),
                                 user_errors=(LookupError,))
    if prefix is not None and revoked == 0:
        raise CommandError(f"tenant {name!r} has no unrevoked API key with prefix {prefix!r} "
                           "(see: pqkms tenant api-key list)")
    return {"name": name, "revoked": revoked}


def _api_key_from_stdin(prompt: str = "API key to revoke: ") -> str:
    """An API key (to revoke, or for ``batch``): typed without echo at a terminal, else
    stdin's first line (a command line would show it to every user of the machine in
    ``ps``)."""
    if sys.stdin.isatty():
        import getpass

        typed = getpass.getpass(prompt)
    else:
        typed = sys.stdin.readline()
    api_key = typed.strip()
    if not api_key:
        raise CommandError("no API key given on stdin")
    return api_key


def _cmd_tenant_directory(args: argparse.Namespace) -> int:
    """``tenant list`` and ``tenant set-plan``."""
    from pqkms.admin import list_tenants, set_tenant_plan

    settings: Settings = _settings(Settings, args)
    output: Any
    if args.tenant_command == "list":
        output = _run_on_store(settings, list_tenants(settings))
    else:
        output = _run_on_store(settings, set_tenant_plan(settings, args.name, Plan(args.plan)),
                               user_errors=(LookupError,))
    print(json.dumps(output), flush=True)
    return 0


def _cmd_tenant_create(args: argparse.Namespace) -> int:
    from pqkms.admin import create_tenant
    from worker.store import TenantExists

    settings: Settings = _settings(Settings, args)
    name = args.name.strip()
    if not name:
        raise CommandError("the tenant name must not be empty")
    try:
        created = _run_on_store(settings, create_tenant(settings, name, Plan(args.plan)))
    except TenantExists:
        raise CommandError(f"a tenant named {name!r} already exists") from None
    print(json.dumps(created.as_json_dict()), flush=True)
    return 0


def _cmd_db_init(args: argparse.Namespace) -> int:
    from pqkms.admin import initialise_store

    settings: Settings = _settings(Settings, args)
    info = _run_on_store(settings, initialise_store(settings))
    key = f"master key {info.master_key_file}" if info.master_key_file else "inline master key"
    print(
        f"database ready: {info.database_url} ({key}, kek id {info.kek_id}, "
        f"schema {info.schema.after})",
        flush=True,
    )
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from pqkms.admin import upgrade_schema

    settings: Settings = _settings(Settings, args)
    report = _run_on_store(settings, upgrade_schema(settings))
    schema = report.schema
    before = schema.before or "none"
    if schema.adopted:
        before += " (created before migrations, adopted)"
    note = "" if schema.changed else " (already at head)"
    print(f"schema {before} -> {schema.after}{note}: {report.database_url}", flush=True)
    if report.kek_id is None:
        print("master key not checked (none available)", flush=True)
    else:
        print(f"master key matches (kek id {report.kek_id})", flush=True)
    return 0


def _cmd_db_backup(args: argparse.Namespace) -> int:
    from pqkms.backup import BackupError, backup_sqlite_database, sqlite_file_of

    settings: Settings = _settings(Settings, args)
    try:
        source = sqlite_file_of(settings.resolved_database_url())
        report = backup_sqlite_database(source, args.file)
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    print(report.describe(), flush=True)
    return 0


def _cmd_db_current(args: argparse.Namespace) -> int:
    from pqkms.admin import read_schema_state

    settings: Settings = _settings(Settings, args)
    state = _run_on_store(settings, read_schema_state(settings))
    print(state.describe(), flush=True)
    return 0


def _cmd_master_key(args: argparse.Namespace) -> int:
    from pqkms.admin import run_master_key_command
    from worker.store.kek_rotation import KekRotationError

    settings: Settings = _settings(Settings, args)
    kek_ids = getattr(args, "kek_ids", None) or (
        [args.kek_id] if getattr(args, "kek_id", None) else []
    )
    result = _run_on_store(settings, run_master_key_command(
        settings, args.master_key_command, kek_ids=kek_ids,
        batch_size=getattr(args, "batch_size", 100),
        retire_old=getattr(args, "retire_old", False),
        adopt_primary=getattr(args, "adopt_primary", None)), user_errors=(KekRotationError,))
    print(json.dumps(result), flush=True)
    if result.get("remaining_under_old_keys"):
        raise CommandError(
            f"{result['remaining_under_old_keys']} key versions are still under older keys "
            "(a worker without the new keyring, or unreadable rows): see 'master-key status'"
        )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    try:
        from worker.main import run
    except ImportError as exc:
        raise CommandError(f"the worker is not installed: {exc}") from None
    settings: Settings = _settings(Settings, args)
    _worker_needs_its_database(settings)
    run(settings)
    return 0


def _worker_needs_its_database(settings: Settings) -> None:
    """Exit with the worker's one ``worker_failed`` line on a database URL it cannot use
    or a SQLite file that does not exist: opening the store would first create an empty
    database and its ``-keystate`` file at the mistyped path."""
    from worker.store.database import require_existing_database

    try:
        require_existing_database(settings.resolved_database_url())
    except Exception as exc:  # any failure to start is that one line, as in worker.main.run
        from worker.logging_setup import configure_logging

        configure_logging(settings.log_level, settings.log_json)
        structlog.get_logger("pqkms.worker").error(
            "worker_failed", error=str(exc), kind=type(exc).__name__)
        sys.exit(1)


def _cmd_bridge(args: argparse.Namespace) -> int:
    try:
        from api_bridge.main import run  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise CommandError(f"the HTTP bridge is not installed: {exc}") from None
    from api_bridge.tls import BridgeTlsError  # type: ignore[import-not-found,unused-ignore]
    from worker.nats_security import NatsSecurityError

    try:
        run(_settings(Settings, args))
    except (BridgeTlsError, NatsSecurityError) as exc:
        raise CommandError(str(exc)) from None
    return 0


def _nats_connect_options(settings: Settings) -> dict[str, Any]:
    """Credentials and TLS for ``nats.connect`` from the ``PQKMS_NATS_*`` settings."""
    from worker.nats_security import NatsSecurityError, nats_security

    try:
        return nats_security(settings).nats_py_options()
    except NatsSecurityError as exc:
        raise CommandError(str(exc)) from None


def _cmd_health(args: argparse.Namespace) -> int:
    from pqkms.health import bridge_is_healthy, describe_worker_state, worker_state
    from worker.nats_security import redacted_urls

    if args.http_url:
        from pqkms.health import pinned_certificate

        cert_file = args.http_cert or os.environ.get("PQKMS_HTTP_TLS_CERT_FILE")
        try:
            pinned = pinned_certificate(Path(cert_file)) if cert_file else None
            healthy = asyncio.run(bridge_is_healthy(args.http_url, time_limit=args.timeout,
                                                    pinned=pinned))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not healthy:
            raise CommandError(f"unhealthy: no healthy answer from {args.http_url}")
        return 0
    settings: Settings = _client_settings(args)
    state = asyncio.run(worker_state(settings.nats_url, time_limit=args.timeout,
                                     connect_options=_nats_connect_options(settings)))
    if state is None or state.get("status") != "ok":
        # Which it was: nobody answered, or a worker that cannot serve said why.
        raise CommandError(f"unhealthy: {describe_worker_state(state)} via "
                           f"{redacted_urls(settings.nats_url)}")
    return 0


def _client_settings(args: argparse.Namespace) -> Settings:
    """Settings of a command that talks to running workers. Without ``--nats-url`` or
    ``PQKMS_NATS_URL``, the URL a ``pqkms up`` of the same data directory recorded comes
    before the default: that stack's server is not on 4222 when 4222 was taken."""
    from pqkms.stack import recorded_nats_url

    settings: Settings = _settings(Settings, args)
    if "nats_url" in settings.model_fields_set:
        return settings
    recorded = recorded_nats_url(settings.data_dir)
    if recorded is None:
        return settings
    return settings.model_copy(update={"nats_url": recorded})


async def _say_when_no_worker_answers(nats_url: str, security: dict[str, Any]) -> None:
    """One line on stderr when no worker answers a health ping at once: the run then
    waits (and retries) for workers, which would otherwise look like a hang."""
    from pqkms.health import describe_worker_state, worker_state
    from worker.nats_security import redacted_urls

    state = await worker_state(nats_url, time_limit=3.0, connect_options=security)
    if state is None:
        print(f"{_PROG} batch: no pqkms worker answers on {redacted_urls(nats_url)} yet; "
              "waiting for one (Ctrl-C to stop; --nats-url or PQKMS_NATS_URL to choose "
              "the server)", file=sys.stderr, flush=True)
    elif state.get("status") != "ok":
        print(f"{_PROG} batch: {describe_worker_state(state)} on "
              f"{redacted_urls(nats_url)}; items may fail and be retried until it "
              "recovers (pqkms health)", file=sys.stderr, flush=True)


def _batch_api_key(key_file: str | None) -> str:
    """The API key of ``batch``: ``--api-key-file`` (``PQKMS_API_KEY_FILE``), else
    ``PQKMS_API_KEY``, else typed without echo at a terminal. Never an argument, as for
    ``tenant api-key revoke``: ``ps`` shows a command line to every user."""
    key_file = key_file or os.environ.get("PQKMS_API_KEY_FILE")
    if key_file == "-":
        return _api_key_from_stdin("API key: ")
    if key_file:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CommandError(f"cannot read the API key file {key_file}: {reason}") from None
        api_key = lines[0].strip() if lines else ""
        if not api_key:
            raise CommandError(f"the API key file {key_file} is empty")
        return api_key
    api_key = os.environ.get("PQKMS_API_KEY", "").strip()
    if api_key:
        return api_key
    if sys.stdin.isatty():
        return _api_key_from_stdin("API key: ")
    raise CommandError("an API key is needed: PQKMS_API_KEY, --api-key-file FILE "
                       "(or PQKMS_API_KEY_FILE), or typed at a terminal")


def _cmd_batch(args: argparse.Namespace) -> int:
    from pqkms.batch_files import (
        ITEMS_FAILED_EXIT_STATUS,
        OPERATIONS,
        BatchFileError,
        BatchOptions,
        check_options,
        run_batch_file,
    )
    from pqkms.batch_interrupt import BatchInterrupted, sigint_stops_the_run
    from pqkms.client import PqkmsClient, PqkmsError

    api_key = _batch_api_key(args.api_key_file)
    settings: Settings = _client_settings(args)
    nats_url = settings.nats_url
    security = _nats_connect_options(settings)
    options = BatchOptions(
        operation=OPERATIONS[args.operation], input_path=Path(args.input),
        output_path=Path(args.output), key_version=args.key_version,
        algorithm=args.algorithm, chunk_size=args.chunk_size, raw_lines=args.raw_lines,
        job_id=args.job_id, keep_job=args.keep_job)

    async def run() -> Any:
        check_options(options)
        await _say_when_no_worker_answers(nats_url, security)
        with sigint_stops_the_run() as checkpoint:
            async with await PqkmsClient.connect(nats_url, api_key,
                                                 nats_options=security) as client:
                return await run_batch_file(client, options, on_chunk=checkpoint)

    try:
        summary = asyncio.run(run())
    # KeyboardInterrupt: Ctrl-C before the run set its own handler, or a second Ctrl-C.
    except (KeyboardInterrupt, BatchInterrupted):
        print(f"\n{_PROG} batch: interrupted; run the same command again to resume",
              file=sys.stderr, flush=True)
        return 130
    except (BatchFileError, PqkmsError, OSError) as exc:
        raise CommandError(str(exc)) from None
    if summary.total_chunks == 0:
        print(f"{args.operation}: the input holds no items; no job submitted, "
              f"{options.output_path} is empty", file=sys.stderr, flush=True)
        return 0
    resumed = f", resumed after {summary.chunks_skipped} chunks" if summary.resumed else ""
    if args.operation == "verify":
        outcome = (f"{summary.succeeded - summary.not_verified} verified, "
                   f"{summary.not_verified} did not verify, {summary.failed} failed")
    else:
        outcome = f"{summary.succeeded} ok, {summary.failed} failed"
    print(f"{args.operation}: {summary.total_items} items in {summary.total_chunks} chunks "
          f"(job {summary.job_id}{resumed}): {outcome}; this run {summary.items_this_run} "
          f"items in {summary.seconds:.1f} s, {summary.items_per_second:,.0f} items/s "
          f"-> {options.output_path}", file=sys.stderr, flush=True)
    if summary.job_kept is not None and not args.keep_job:
        print(f"{_PROG} batch: job {summary.job_id} stays in JetStream until it expires: "
              f"{summary.job_kept}; delete it with PqkmsClient.delete_job",
              file=sys.stderr, flush=True)
    return 0 if summary.all_ok else ITEMS_FAILED_EXIT_STATUS


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from worker.audit.verify import InvalidSince, VerifyReport, verify_from_settings
    from worker.store.database import require_existing_database

    settings: Settings = _client_settings(args)

    async def verify() -> VerifyReport:
        # An audit of a mistyped path must not create an empty database there.
        require_existing_database(settings.resolved_database_url())
        return await verify_from_settings(settings, use_stream=not args.no_stream,
                                          since=args.since)

    report = _run_on_store(settings, verify(), user_errors=(InvalidSince,))
    print("\n".join(report.lines()), flush=True)
    return 0 if report.intact else 1


def _cmd_audit_archive(args: argparse.Namespace) -> int:
    from worker.audit.archive import ArchiveNeedsStream, ArchiveRefused, archive_from_settings
    from worker.audit.archive_file import ArchiveFileError
    from worker.audit.archive_record import ArchiveNotAttested
    from worker.audit.verify import InvalidSince
    from worker.store.audit_archive_rows import ArchiveConflict
    from worker.store.database import require_existing_database

    settings: Settings = _client_settings(args)

    async def archive() -> Any:
        require_existing_database(settings.resolved_database_url())
        return await archive_from_settings(settings, args.out, args.before, since=args.since)

    outcome = _run_on_store(settings, archive(), user_errors=(
        InvalidSince, ArchiveFileError, ArchiveRefused, ArchiveConflict, ArchiveNeedsStream,
        ArchiveNotAttested))
    print("\n".join(outcome.lines()), flush=True)
    return 0 if outcome.check.intact else 1


def _cmd_audit_verify_archive(args: argparse.Namespace) -> int:
    from worker.audit.archive_check import verify_archive_files
    from worker.store.audit_log import AuditLog
    from worker.store.database import require_existing_database

    settings: Settings = _settings(Settings, args)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise CommandError(f"no such archive file: {', '.join(missing)}")

    async def check() -> Any:
        if args.no_database:
            return await verify_archive_files(args.files, None)
        require_existing_database(settings.resolved_database_url())
        log = AuditLog.connect(settings.resolved_database_url())
        try:
            return await verify_archive_files(args.files, log)
        finally:
            await log.close()

    result = _run_on_store(settings, check())
    print("\n".join(result.lines()), flush=True)
    return 0 if result.intact else 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        return _cmd_up(args)
    if args.command == "tenant":
        if args.tenant_command == "rotation-policy":
            return _cmd_rotation_policy(args)
        if args.tenant_command == "api-key":
            return _cmd_tenant_api_key(args)
        if args.tenant_command in ("list", "set-plan"):
            return _cmd_tenant_directory(args)
        return _cmd_tenant_create(args)
    if args.command == "db":
        db_commands = {"init": _cmd_db_init, "upgrade": _cmd_db_upgrade,
                       "current": _cmd_db_current, "backup": _cmd_db_backup}
        return db_commands[args.db_command](args)
    if args.command == "master-key":
        return _cmd_master_key(args)
    if args.command == "audit":
        audit_commands = {"verify": _cmd_audit_verify, "archive": _cmd_audit_archive,
                          "verify-archive": _cmd_audit_verify_archive}
        return audit_commands[args.audit_command](args)
    if args.command == "worker":
        return _cmd_worker(args)
    if args.command == "bridge":
        return _cmd_bridge(args)
    if args.command == "health":
        return _cmd_health(args)
    if args.command == "batch":
        return _cmd_batch(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


def _fail(command: str, message: str) -> NoReturn:
    print(f"{_PROG} {command}: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``pqkms`` command."""
    args = build_parser().parse_args(argv)
    # Everything pqkms writes (database, logs, NATS store and configuration, batch
    # outputs) is for this user alone; children started by ``pqkms up`` inherit it.
    os.umask(0o077)
    # Warnings of the code the commands share with the worker (structlog, whose default
    # is stdout) go to stderr: stdout carries what scripts read, such as the one JSON
    # object of ``tenant create`` with the only copy of a new API key. ``worker`` and
    # ``bridge`` configure their own logging when they start.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if getattr(args, "unused_master_key_file", None):
        print(f"{_PROG}: warning: --master-key-file is not used by this command (it never "
              "reads the master key) and will be refused by a later version",
              file=sys.stderr, flush=True)
    if args.command in ("up", "db", "tenant", "health"):
        # The worker and the bridge configure logging themselves.
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format=f"%(asctime)s {_PROG}: %(message)s",
            datefmt="%H:%M:%S",
            stream=sys.stderr,
        )
        if not args.verbose:
            # Alembic names each of its plugins at start-up; the upgrades themselves stay.
            logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        code = _dispatch(args)
    except CommandError as exc:
        _fail(args.command, str(exc))
    sys.exit(code)
