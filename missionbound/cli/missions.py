"""``missionbound mission``: inspect Missions, and revoke, suspend, resume or complete one
as the local operator (PROFILE.md section 7; docs/cli.md)."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from missionbound.cli.common import (
    EXIT_USAGE,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    database_error,
    fail,
    open_database,
    settings_from,
    stdout,
)
from missionbound.config import Settings
from missionbound.issuer.lifecycle import (
    LifecycleActor,
    change_lifecycle,
    check_reason,
    parse_expected_version,
)
from missionbound.mission.errors import MissionError
from missionbound.mission.lifecycle import (
    LIFECYCLE_OPERATIONS,
    Event,
    LifecyclePolicy,
    Role,
    State,
    effective_state,
)
from missionbound.mission.record import MissionRecord, check_mission_id, format_instant
from missionbound.store import MissionNotFound, Store, missions
from missionbound.store.lifecycle import TransitionResult

mission_app = typer.Typer(
    help="Inspect Missions; revoke, suspend, resume or complete one.", no_args_is_help=True)


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
            escape(record.subject.sub) if record.subject else "(at approval)",
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
    require_mission_id(mission_id)
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


def require_mission_id(mission_id: str) -> None:
    try:
        check_mission_id(mission_id)
    except MissionError:
        fail(f"{mission_id!r} is not a Mission id (msn_ followed by 22 or more characters)",
             EXIT_USAGE)  # fmt: skip


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
        ("subject", f"{record.subject.sub} ({record.subject.iss})" if record.subject
         else "established at approval"),
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
            escape(actor_label(actor)),
            str(item.get("committed_at")),
            escape(str(item.get("reason") or "")),
        )
    stdout().print(history)


def actor_label(actor: dict[str, object]) -> str:
    """Who acted, as the history table shows it."""
    for name, prefix in (("user", ""), ("operator", "operator "), ("client_id", ""),
                         ("sub", ""), ("role", "")):
        value = actor.get(name)
        if value:
            return f"{prefix}{value}"
    return "-"


# --------------------------------------------------------------------------- lifecycle

MissionIdArgument = Annotated[str, typer.Argument(help="The Mission id (msn_...).")]
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why (recorded in the audit log and sent with the "
                      "event; at most 1024 characters).", show_default=False)]
ExpectedVersionOption = Annotated[
    str | None,
    typer.Option("--expected-version", show_default=False,
                 help="Refuse unless the Mission is at this version (optimistic concurrency; "
                 "1 to 18 digits)."),
]
_PAST = {Event.REVOKE: "revoked", Event.SUSPEND: "suspended", Event.RESUME: "resumed",
         Event.COMPLETE: "completed"}


def operator_name() -> str:
    """The operating-system user running the command: the audit log's actor."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return "unknown"


def change_mission(
    operation: Event,
    mission_id: str,
    reason: str,
    expected_version: str | None,
    as_json: bool,
    config: Path | None,
    database_url: str | None,
) -> None:
    """One lifecycle operation as the local operator (role ``admin``), in one transaction."""
    require_mission_id(mission_id)
    # The endpoint's and the console's rules (decision G6), from the same parsers.
    if not reason.strip():
        fail("--reason must say why", EXIT_USAGE)
    try:
        checked_reason = check_reason(reason, required=True)
    except MissionError as exc:
        fail(f"--reason: {exc.description}", EXIT_USAGE)
    try:
        checked_version = parse_expected_version(expected_version)
    except MissionError as exc:
        fail(f"--expected-version: {exc.description}", EXIT_USAGE)
    settings = settings_from(config_file=config, database_url=database_url)
    engine = open_database(settings)
    actor = LifecycleActor(frozenset({Role.ADMIN}), {"operator": operator_name(), "via": "cli"})
    try:
        with Store(engine).begin() as session:
            result = change_lifecycle(
                session, mission_id, operation, actor, reason=checked_reason,
                now=datetime.now(UTC), expected_version=checked_version,
                policy=lifecycle_policy(settings))
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    except MissionError as exc:
        refused(exc, mission_id, as_json)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(change_json(result, operation, actor, checked_reason), indent=2))
        return
    print_change(result, operation, actor, checked_reason)


def refused(error: MissionError, mission_id: str, as_json: bool) -> NoReturn:
    """Exit 1 naming the wire code (decision W9: the command ran, the answer is no)."""
    description = (f"no Mission {mission_id}" if isinstance(error, MissionNotFound)
                   else error.description)
    if as_json:
        typer.echo(json.dumps({"mission_id": mission_id, "error": error.error,
                               "error_description": description}, indent=2))
    fail(f"{error.error}: {description}")


def change_json(result: TransitionResult, operation: Event, actor: LifecycleActor,
                reason: str | None) -> dict[str, Any]:
    decision = result.decision
    return {
        "mission_id": result.record.mission_id,
        "operation": operation.value,
        "changed": decision.changed,
        "prior_state": decision.from_state.value,
        "state": decision.to_state.value,
        "prior_version": decision.from_version,
        "version": decision.to_version,
        "reason": reason,
        "actor": actor.trace,
    }


def print_change(result: TransitionResult, operation: Event, actor: LifecycleActor,
                 reason: str | None) -> None:
    decision = result.decision
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    if decision.changed:
        title = f"[bold green]{_PAST[operation]}[/]"
        grid.add_row("state", f"{decision.from_state.value} [bold]->[/] "
                              f"[bold]{decision.to_state.value}[/]")
        grid.add_row("version", f"{decision.from_version} -> {decision.to_version}")
        grid.add_row("reason", escape(str(reason)))
        grid.add_row("by", escape(f"operator {actor.trace['operator']} (admin, via cli)"))
    else:
        title = "[bold]nothing to do[/]"
        grid.add_row("state", f"already {decision.to_state.value}: {operation.value} is an "
                              "idempotent repeat, no event")
        grid.add_row("version", str(decision.to_version))
    stdout().print(Panel(grid, title=f"{result.record.mission_id}", subtitle=title,
                         expand=False))


def _register(operation: Event) -> None:
    def command(
        mission_id: MissionIdArgument,
        reason: ReasonOption,
        expected_version: ExpectedVersionOption = None,
        as_json: JsonOption = False,
        config: ConfigOption = None,
        database_url: DatabaseUrlOption = None,
    ) -> None:
        change_mission(operation, mission_id, reason, expected_version, as_json, config,
                       database_url)

    command.__doc__ = {
        Event.REVOKE: "Revoke a Mission (active or suspended): no token derives from it again.",
        Event.SUSPEND: "Suspend an active Mission until it is resumed.",
        Event.RESUME: "Resume a suspended Mission.",
        Event.COMPLETE: "Close a Mission whose task is done (active or suspended).",
    }[operation]
    mission_app.command(operation.value)(command)


for _operation in LIFECYCLE_OPERATIONS:
    _register(_operation)
