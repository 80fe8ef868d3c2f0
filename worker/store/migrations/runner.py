"""Alembic, driven from code: read the schema revision, adopt, upgrade to head.

Everything here is synchronous and works on a SQLAlchemy :class:`Connection` that the
caller already holds inside a transaction (:mod:`worker.store.database` takes the
schema lock, then calls these through ``AsyncConnection.run_sync``). The migrations, the
adoption of a pre-Alembic database and the version row therefore commit or roll back
as one unit, and two processes upgrading at once simply queue on the lock.

No ``alembic.ini`` is read: the :class:`~alembic.config.Config` is built here with the
script location taken from this package, so it works from an installed wheel and from
any working directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

__all__ = [
    "BASELINE_REVISION",
    "BASELINE_TABLES",
    "CONNECTION_ATTRIBUTE",
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "SchemaError",
    "SchemaOutOfDate",
    "SchemaState",
    "SchemaTooNew",
    "SchemaUpgrade",
    "alembic_config",
    "head_revision",
    "read_schema_state",
    "require_head",
    "upgrade_to_head",
]

SCRIPT_LOCATION = Path(__file__).resolve().parent
# The first revision: every table pqkms created before it used Alembic.
BASELINE_REVISION = "0001"
VERSION_TABLE = "alembic_version"

# Alembic's notes on its own set-up ("Context impl SQLiteImpl.") are noise on a
# command's stderr; what changed is reported by the caller (``pqkms db upgrade``).
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
# Key of Config.attributes under which env.py finds the caller's connection.
CONNECTION_ATTRIBUTE = "connection"
# What SQLModel's create_all made before Alembic. Finding these without a recorded
# revision means "a database from before migrations": stamped at the baseline, kept.
BASELINE_TABLES = frozenset(
    {
        "pqkms_tenant",
        "pqkms_api_key",
        "pqkms_key_version",
        "pqkms_master_key_check",
        "pqkms_schema_info",
    }
)


class SchemaError(RuntimeError):
    """The database schema is not one this pqkms can use as it is."""


class SchemaTooNew(SchemaError):
    """The database was migrated by a newer pqkms than this one."""


class SchemaOutOfDate(SchemaError):
    """The database schema is older than this pqkms; ``pqkms db upgrade`` fixes it."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands relative to this pqkms's migrations."""

    current: str | None
    head: str
    # pqkms tables exist but no revision is recorded (created before Alembic).
    pre_migration: bool = False

    @property
    def at_head(self) -> bool:
        """Whether the schema is exactly what this pqkms expects."""
        return self.current == self.head

    def describe(self) -> str:
        """One line for ``pqkms db current``: the revision and how it relates to head."""
        if self.at_head:
            return f"{self.current} (head)"
        if self.current is None:
            if self.pre_migration:
                return f"none (created before migrations; head {self.head}: run `pqkms db upgrade`)"
            return f"none (empty database; head {self.head})"
        return f"{self.current} (behind head {self.head}; run `pqkms db upgrade`)"


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """What an upgrade did: the revision before (``None``: none recorded) and after."""

    before: str | None
    after: str
    # A pre-Alembic database was stamped at the baseline before upgrading.
    adopted: bool = False

    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return self.adopted or self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged migrations, built without any ini file.

    With ``connection``, ``env.py`` runs the migrations on it (inside the caller's
    transaction). Without one, the configuration still serves offline tasks such as
    ``alembic.command.revision(alembic_config(), "message", rev_id="0004")``.
    """
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # Our revision files are named <id>_<slug>.py, not Alembic's default template.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes[CONNECTION_ATTRIBUTE] = connection
    return config


@cache
def _script_directory() -> ScriptDirectory:
    # Parsed once per process: the scripts shipped with this code do not change.
    return ScriptDirectory.from_config(alembic_config())


@cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _script_directory().walk_revisions())


def head_revision() -> str:
    """The newest revision this code knows (a single head: the history is linear)."""
    heads = _script_directory().get_heads()
    if len(heads) != 1:
        raise SchemaError(f"the packaged migrations have {len(heads)} heads; expected one")
    return heads[0]


def _table_names(connection: Connection) -> set[str]:
    # The default schema only: on PostgreSQL, the first entry of search_path.
    return set(sa.inspect(connection).get_table_names())


def _recorded_revisions(connection: Connection) -> list[str]:
    # Read directly rather than through a MigrationContext, which logs at INFO on
    # every configure: this runs at every worker start.
    rows = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))  # noqa: S608
    return [str(value) for value in rows.scalars()]


def read_schema_state(connection: Connection) -> SchemaState:
    """The database's revision. Raises :class:`SchemaTooNew` for a revision unknown here."""
    head = head_revision()
    tables = _table_names(connection)
    revisions = _recorded_revisions(connection) if VERSION_TABLE in tables else []
    unknown = [revision for revision in revisions if revision not in _known_revisions()]
    if unknown:
        raise SchemaTooNew(
            f"database schema is newer than this pqkms (database revision "
            f"{', '.join(unknown)}, newest known {head}); upgrade pqkms"
        )
    if len(revisions) > 1:
        raise SchemaError(f"database records several schema revisions: {', '.join(revisions)}")
    if not revisions:
        return SchemaState(None, head, pre_migration=bool(tables & BASELINE_TABLES))
    return SchemaState(revisions[0], head)


def require_head(connection: Connection) -> SchemaState:
    """The state if the schema is at head; else :class:`SchemaOutOfDate` (or TooNew)."""
    state = read_schema_state(connection)
    if state.at_head:
        return state
    if state.pre_migration:
        raise SchemaOutOfDate(
            "database schema was created before schema migrations; run `pqkms db upgrade` "
            "(it adopts the database, no data is lost)"
        )
    if state.current is None:
        raise SchemaOutOfDate("database has no pqkms schema; run `pqkms db upgrade` first")
    raise SchemaOutOfDate(
        f"database schema is at revision {state.current}, this pqkms needs {state.head}; "
        "run `pqkms db upgrade` first"
    )


def upgrade_to_head(connection: Connection) -> SchemaUpgrade:
    """Adopt a pre-Alembic database if needed, then apply every missing migration.

    ``connection`` must already be in a transaction that the caller commits, and the
    caller must hold the schema lock so that concurrent upgrades queue.
    """
    state = read_schema_state(connection)
    if state.at_head:
        return SchemaUpgrade(state.current, state.head)
    config = alembic_config(connection)
    adopted = False
    if state.current is None and state.pre_migration:
        missing = BASELINE_TABLES - _table_names(connection)
        if missing:
            # Not something create_all ever left behind: refuse rather than guess.
            raise SchemaError(
                "database has some pqkms tables but not all of them (missing: "
                f"{', '.join(sorted(missing))}) and no schema revision; repair it by hand"
            )
        command.stamp(config, BASELINE_REVISION)
        adopted = True
    command.upgrade(config, "head")
    after = read_schema_state(connection)
    if after.current is None:  # pragma: no cover - Alembic always records the head
        raise SchemaError("the upgrade recorded no schema revision")
    return SchemaUpgrade(state.current, after.current, adopted=adopted)
