"""``missionbound keys``: the Authorization Server's signing keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from missionbound.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    database_error,
    open_database,
    settings_from,
    stdout,
)
from missionbound.issuer.keys import (
    DEFAULT_ALGORITHM,
    RETIRED_KEY_PUBLISHED_FOR,
    SigningAlgorithm,
    list_signing_keys,
    rotate_signing_key,
)
from missionbound.mission.record import format_instant
from missionbound.store import Store

keys_app = typer.Typer(help="The Authorization Server's signing keys.", no_args_is_help=True)


@keys_app.command("rotate")
def keys_rotate(
    alg: Annotated[
        SigningAlgorithm, typer.Option(help="Algorithm of the new key.")
    ] = DEFAULT_ALGORITHM,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Add a new signing key and retire the current one, which stays published in /jwks
    long enough for everything it signed to expire."""
    settings = settings_from(config_file=config, database_url=database_url)
    engine = open_database(settings)
    now = datetime.now(UTC)
    try:
        rotation = rotate_signing_key(Store(engine), now, alg)
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    finally:
        engine.dispose()
    until = format_instant(now + RETIRED_KEY_PUBLISHED_FOR)
    out = stdout()
    out.print(f"new signing key {rotation.new_kid} ({alg.value})", highlight=False)
    for kid in rotation.retired_kids:
        out.print(f"retired {kid}, published until {until}", highlight=False)
    if not rotation.retired_kids:
        out.print("no key was current: nothing retired", highlight=False)


@keys_app.command("list")
def keys_list(
    as_json: JsonOption = False,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """List the published signing keys, oldest first (public information only)."""
    settings = settings_from(config_file=config, database_url=database_url)
    engine = open_database(settings)
    try:
        keys = list_signing_keys(Store(engine), datetime.now(UTC))
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    finally:
        engine.dispose()

    def instant(value: datetime | None) -> str | None:
        return format_instant(value) if value is not None else None

    if as_json:
        rows = [
            {
                "kid": key.kid,
                "alg": key.alg,
                "created": instant(key.created_at),
                "retired": instant(key.retired_at),
                "published_until": instant(key.published_until),
                "signing": key.signing,
            }
            for key in keys
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not keys:
        stdout().print("no signing keys (`missionbound serve` creates one)", highlight=False)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("kid", no_wrap=True, min_width=len(keys[0].kid))
    for column in ("alg", "created", "retired", "published until", "signing"):
        table.add_column(column, overflow="fold")
    for key in keys:
        table.add_row(
            key.kid,
            escape(key.alg),
            instant(key.created_at),
            instant(key.retired_at) or "-",
            instant(key.published_until) or "while current",
            "yes" if key.signing else "",
        )
    stdout().print(table)
