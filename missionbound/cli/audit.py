"""``missionbound audit``: the audit log."""

from __future__ import annotations

import typer
from sqlalchemy.exc import SQLAlchemyError

from missionbound.audit import verify
from missionbound.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    database_error,
    fail,
    open_database,
    settings_from,
    stdout,
)

audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Recompute the hash chain and every Mission's anchors; exit 1 at the first break."""
    settings = settings_from(config_file=config, database_url=database_url)
    engine = open_database(settings)
    try:
        report = verify(engine)
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    finally:
        engine.dispose()
    counts = f"{report.records_checked} records, {report.missions_checked} Missions checked"
    if report.ok:
        stdout().print(f"audit log intact: {counts}", highlight=False)
        return
    fail(f"audit log broken: {report.first_break} ({counts})")
