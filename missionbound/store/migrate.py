"""Apply the Alembic migrations shipped inside the package (``missionbound db upgrade``,
and ``missionbound serve`` at start: DESIGN.md "Interfaces").

No ``alembic.ini`` is needed: the configuration is built here. Several replicas starting at
once are safe: on PostgreSQL the upgrade runs under a transaction-scoped advisory lock, on
SQLite inside one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from missionbound.store.engine import create_engine_for, is_postgresql

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# An arbitrary constant naming "the missionbound schema migration" among advisory locks.
_MIGRATION_LOCK_KEY = 0x6D697373696F6E  # "mission"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation would choke on "%" in a password.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found in " + str(MIGRATIONS_DIR))
    return head


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the newest)."""
    engine = create_engine_for(url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Like :func:`upgrade`, on an existing engine (keeps its connect options, e.g. a
    PostgreSQL ``search_path``)."""
    config = alembic_config()
    with engine.begin() as connection:
        if is_postgresql(engine):
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
