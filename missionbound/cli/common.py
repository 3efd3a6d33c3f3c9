"""Plumbing shared by the ``missionbound`` commands: options, exit codes, settings and
database opening with friendly errors (never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import structlog
import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from missionbound.config import ConfigError, Settings, load_settings
from missionbound.store.engine import DatabaseUrlError, create_engine_for
from missionbound.store.migrate import current_revision, head_revision
from missionbound.tenant import Tenant, load_tenant

EXIT_FAILED = 1
EXIT_USAGE = 2

err = Console(stderr=True)


def stdout() -> Console:
    """The terminal; or, for a pipe or a file, a console wide enough that tables are not
    cut to rich's default 80 columns (one Mission per line keeps ``grep`` useful)."""
    console = Console()
    return console if console.is_terminal else Console(width=250)


log = structlog.get_logger("missionbound.cli")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML configuration file (also MISSIONBOUND_CONFIG_FILE).",
        dir_okay=False,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy database URL (also MISSIONBOUND_DATABASE_URL).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# --------------------------------------------------------------------------- plumbing


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    # escape(): configuration messages quote TOML tables such as "[catalog]".
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_from(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def tenant_from(settings: Settings) -> Tenant:
    try:
        return load_tenant(settings)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def engine_from(settings: Settings) -> Engine:
    try:
        return create_engine_for(settings.database_url)
    except DatabaseUrlError as exc:
        fail(f"database_url: {exc}", EXIT_USAGE)


def database_error(settings: Settings, exc: SQLAlchemyError) -> NoReturn:
    # The driver's first line names the cause (refused, auth failed, ...) without the SQL.
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    fail(f"the database at {settings.database_url_for_display} does not answer: {reason}")


def open_database(settings: Settings) -> Engine:
    """An engine on a database that exists and has the current schema; otherwise a clear
    error telling the operator what to run. Read commands never create a database."""
    if settings.is_sqlite:
        path = make_url(settings.database_url).database or ""
        if not Path(path).exists():
            fail(
                f"no database at {path}: run `missionbound db upgrade` "
                "(or start `missionbound serve`) first"
            )
    engine = engine_from(settings)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        database_error(settings, exc)
    head = head_revision()
    if revision != head:
        engine.dispose()
        where = settings.database_url_for_display
        if revision is None:
            fail(f"the database at {where} has no schema yet: run `missionbound db upgrade`")
        fail(
            f"the database at {where} is at schema revision {revision}, this version needs "
            f"{head}: run `missionbound db upgrade`"
        )
    return engine
