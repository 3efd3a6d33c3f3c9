"""The ``missionbound`` command (DESIGN.md "Interfaces"); see ``docs/cli.md``.

Every command that touches the database takes ``--config`` and ``--database-url`` and reads
the same ``MISSIONBOUND_*`` environment as ``serve``, so an operator's commands always look
at the database the server uses.

Exit codes: 0 success; 1 the command ran and the answer is "no" (database unreachable, no
such Mission, audit chain broken); 2 the command cannot run as given (bad option, bad
configuration, malformed id).
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import structlog
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from missionbound.audit import verify
from missionbound.config import ConfigError, Settings, load_settings
from missionbound.mission.errors import MissionError
from missionbound.mission.lifecycle import LifecyclePolicy, State, effective_state
from missionbound.mission.record import MissionRecord, check_mission_id, format_instant
from missionbound.store import Store, missions
from missionbound.store.engine import DatabaseUrlError, create_engine_for
from missionbound.store.migrate import current_revision, head_revision, upgrade_engine
from missionbound.tenant import Tenant, demo_credentials, load_tenant

EXIT_FAILED = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="missionbound",
    help="Mission-Bound OAuth: Authorization Server, PDP and enforcement points.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback can hold passwords, secrets and tokens.
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
mission_app = typer.Typer(help="Inspect Missions.", no_args_is_help=True)
app.add_typer(mission_app, name="mission")
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

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


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default 127.0.0.1; also MISSIONBOUND_HOST)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (default 8000; also MISSIONBOUND_PORT).")
    ] = None,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    issuer: Annotated[
        str | None,
        typer.Option(help="Issuer URL (default http://<host>:<port>; also MISSIONBOUND_ISSUER)."),
    ] = None,
) -> None:
    """Run the server: apply migrations, then serve HTTP until interrupted.

    With no configuration this is the demo tenant, and its demo secrets are printed.
    """
    # Imported here: the other commands need neither uvicorn nor the web stack.
    import uvicorn

    from missionbound.web.app import create_app
    from missionbound.web.logs import configure_logging

    settings = settings_from(
        config_file=config, host=host, port=port, database_url=database_url, issuer=issuer
    )
    configure_logging(settings.log_level)
    tenant = tenant_from(settings)
    engine = engine_from(settings)
    try:
        before = current_revision(engine)
        upgrade_engine(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        database_error(settings, exc)
    log.info(
        "database_ready",
        database=settings.database_url_for_display,
        migrated_from=before,
        revision=head_revision(),
    )
    if tenant.is_demo:
        print_demo_banner(settings)
        if not (_is_loopback(settings.issuer) and _is_loopback_host(settings.host)):
            # Either the issuer or the listening address reaches beyond this machine.
            log.warning(
                "demo_tenant_exposed",
                issuer=settings.issuer,
                host=settings.host,
                detail="the demo tenant's secrets are public; configure a tenant",
            )
    application = create_app(settings, tenant=tenant, engine=engine)
    log.info("serving", issuer=settings.issuer, tenant=tenant.name, role=settings.role)
    try:
        # One process: on SQLite the database serializes writers anyway, and scaling out is
        # N replicas on PostgreSQL (DESIGN.md "Scale-out"), not workers sharing one file.
        uvicorn.run(
            application,
            host=settings.host,
            port=settings.port,
            log_config=None,  # keep the JSON pipeline configure_logging installed
            access_log=False,  # RequestLogMiddleware writes the one line per request
        )
    finally:
        engine.dispose()


def print_demo_banner(settings: Settings) -> None:
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("kind")
    table.add_column("name")
    table.add_column("password / secret")
    table.add_column("")
    for credential in demo_credentials():
        table.add_row(credential.kind, credential.name, credential.secret, credential.note)
    stdout().print(
        Panel(
            table,
            title="[bold yellow]missionbound demo tenant: DEMO SECRETS[/]",
            subtitle="public values, refused by any configured tenant",
            expand=False,
        )
    )
    stdout().print(
        f"issuer   {settings.issuer}\n"
        f"database {settings.database_url_for_display}\n"
        f"docs     {settings.issuer}/docs",
        highlight=False,
    )


def _is_loopback(issuer: str) -> bool:
    return _is_loopback_host(urlsplit(issuer).hostname or "")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- db


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


# --------------------------------------------------------------------------- mission


@mission_app.command("list")
def mission_list(
    state: Annotated[
        State | None,
        typer.Option(help="Only Missions whose stored state is this.", case_sensitive=False),
    ] = None,
    subject: Annotated[str | None, typer.Option(help="Only this subject (sub).")] = None,
    client: Annotated[str | None, typer.Option(help="Only this client_id.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=missions.MAX_LIST_LIMIT, help="At most this many.")
    ] = 100,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """List Missions, newest first."""
    settings = settings_from(config_file=config, database_url=database_url)
    engine = open_database(settings)
    try:
        with Store(engine).read() as session, session.begin():
            records = missions.list_missions(
                session, state=state, subject=subject, client_id=client, limit=limit
            )
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    except MissionError as exc:
        fail(exc.description)
    finally:
        engine.dispose()
    policy = lifecycle_policy(settings)
    now = datetime.now(UTC)
    if as_json:
        typer.echo(json.dumps([mission_json(r, now, policy) for r in records], indent=2))
        return
    if not records:
        stdout().print("no Missions", highlight=False)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    # Ids are what an operator copies into the next command: never shortened.
    table.add_column("mission_id", no_wrap=True, min_width=len(records[0].mission_id))
    table.add_column("state", overflow="fold")
    table.add_column("subject", overflow="fold")
    table.add_column("client", overflow="fold")
    table.add_column("expires", overflow="fold")
    table.add_column("goal", overflow="ellipsis", no_wrap=True, max_width=40)
    for record in records:
        table.add_row(
            record.mission_id,
            state_label(record, now, policy),
            escape(record.subject.sub),
            escape(record.client_id),
            format_instant(record.mission_expiry),
            escape(str(record.mission_intent.get("goal", ""))),
        )
    stdout().print(table)


@mission_app.command("show")
def mission_show(
    mission_id: Annotated[str, typer.Argument(help="The Mission id (msn_...).")],
    as_json: JsonOption = False,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Show one Mission: its record, authority and lifecycle history."""
    try:
        check_mission_id(mission_id)
    except MissionError:
        fail(f"{mission_id!r} is not a Mission id (msn_ followed by 22 or more characters)",
             EXIT_USAGE)  # fmt: skip
    settings = settings_from(config_file=config, database_url=database_url)
    engine = open_database(settings)
    try:
        with Store(engine).read() as session, session.begin():
            record = missions.get(session, mission_id)
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    except MissionError as exc:
        fail(exc.description)
    finally:
        engine.dispose()
    if record is None:
        fail(f"no Mission {mission_id}")
    policy = lifecycle_policy(settings)
    now = datetime.now(UTC)
    if as_json:
        typer.echo(json.dumps(mission_json(record, now, policy), indent=2))
        return
    print_mission(record, now, policy)


def lifecycle_policy(settings: Settings) -> LifecyclePolicy:
    return LifecyclePolicy(consent_window=timedelta(seconds=settings.consent_window_seconds))


def current_state(record: MissionRecord, now: datetime, policy: LifecyclePolicy) -> State:
    return effective_state(
        record.state,
        now=now,
        mission_expiry=record.mission_expiry,
        created_at=record.created_at,
        policy=policy,
    )


def state_label(record: MissionRecord, now: datetime, policy: LifecyclePolicy) -> str:
    """The effective state (PROFILE.md section 7: clock first), and the stored one when the
    clock has overtaken it and nothing has persisted that yet."""
    effective = current_state(record, now, policy)
    if effective is record.state:
        return effective.value
    return f"{effective.value} (stored: {record.state.value})"


def mission_json(record: MissionRecord, now: datetime, policy: LifecyclePolicy) -> dict[str, Any]:
    # The section 7 record, plus the state an operator must act on.
    return {**record.as_dict(), "effective_state": current_state(record, now, policy).value}


def print_mission(record: MissionRecord, now: datetime, policy: LifecyclePolicy) -> None:
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column()
    rows: list[tuple[str, str | None]] = [
        ("state", state_label(record, now, policy)),
        ("version", str(record.version)),
        ("goal", record.mission_intent.get("goal")),
        ("subject", f"{record.subject.sub} ({record.subject.iss})"),
        ("approver", record.approver.sub if record.approver else None),
        ("client", record.client_id),
        ("origin", record.origin),
        ("created", format_instant(record.created_at)),
        ("activated", format_instant(record.activated_at) if record.activated_at else None),
        ("expires", format_instant(record.mission_expiry)),
        ("proposal_hash", record.proposal_hash),
        ("consent_rendering_hash", record.consent_rendering_hash),
        ("authority_hash", record.authority_hash),
        ("policy_version", record.policy_version),
    ]
    for name, value in rows:
        summary.add_row(name, escape(str(value)) if value is not None else "-")
    stdout().print(Panel(summary, title=record.mission_id, expand=False))

    authority = Table(title="authority", title_justify="left", box=box.SIMPLE_HEAD)
    authority.add_column("resource", overflow="fold")
    authority.add_column("actions", overflow="fold")
    authority.add_column("constraints", overflow="fold")
    for entry in record.authority_set or record.authorization_details_requested:
        authority.add_row(
            escape(str(entry.get("resource", ""))),
            escape(", ".join(entry.get("actions", []))),
            escape(json.dumps(entry.get("constraints", {}), sort_keys=True)),
        )
    stdout().print(authority)

    history = Table(title="lifecycle history", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("version", "event", "state", "by", "at", "reason"):
        history.add_column(column, overflow="fold")
    for item in record.lifecycle_history:
        actor = item.get("actor") or {}
        history.add_row(
            str(item.get("version")),
            str(item.get("event")),
            str(item.get("to_state")),
            escape(str(actor.get("sub") or actor.get("client_id") or actor.get("role") or "-")),
            str(item.get("committed_at")),
            escape(str(item.get("reason") or "")),
        )
    stdout().print(history)


# --------------------------------------------------------------------------- audit


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
