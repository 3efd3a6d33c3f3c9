"""``missionbound db``: the database schema."""

from __future__ import annotations

import typer
from sqlalchemy.exc import SQLAlchemyError

from missionbound.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    database_error,
    engine_from,
    settings_from,
    stdout,
)
from missionbound.store.migrate import current_revision, upgrade_engine

db_app = typer.Typer(help="The database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Create the database schema, or bring it to this version's newest revision."""
    settings = settings_from(config_file=config, database_url=database_url)
    engine = engine_from(settings)
    try:
        before = current_revision(engine)
        upgrade_engine(engine)
        after = current_revision(engine)
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    finally:
        engine.dispose()
    where = settings.database_url_for_display
    if before == after:
        stdout().print(f"{where}: already at revision {after}", highlight=False)
    else:
        stdout().print(f"{where}: upgraded from {before or 'empty'} to {after}", highlight=False)
