"""``missionbound audit``: the audit log and the runtime evidence chains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
from missionbound.mission.canonical import parse_strict
from missionbound.mission.errors import InvalidRequest

audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)

JwksOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--jwks",
        help="A JWK Set file (the issuer's /jwks, as kept by the auditor) to verify evidence "
        "signatures with instead of the keys the database holds; repeat for several.",
        dir_okay=False,
        exists=True,
        readable=True,
    ),
]
MAX_JWKS_FILE = 1024 * 1024


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    jwks: JwksOption = None,
) -> None:
    """Recompute the hash chain, every Mission's anchors and every evidence chain (links and
    signatures); exit 1 at the first break."""
    evidence_jwks = _read_jwks(jwks) if jwks else None
    settings = settings_from(config_file=config, database_url=database_url)
    engine = open_database(settings)
    try:
        report = verify(engine, evidence_jwks=evidence_jwks)
    except SQLAlchemyError as exc:
        database_error(settings, exc)
    finally:
        engine.dispose()
    counts = (
        f"{report.records_checked} records, {report.missions_checked} Missions checked, "
        f"{report.evidence_checked} evidence records verified"
    )
    if report.ok:
        stdout().print(f"audit log intact: {counts}", highlight=False)
        return
    fail(f"audit log broken: {report.first_break} ({counts})")


def _read_jwks(paths: list[Path]) -> dict[str, Any]:
    """One JWK Set of every key in the files (key sets saved over time, across rotations)."""
    keys: list[Any] = []
    for path in paths:
        try:
            document = parse_strict(path.read_bytes(), max_size=MAX_JWKS_FILE, what=str(path))
        except (OSError, InvalidRequest) as exc:
            fail(f"cannot read the JWK Set {path}: {exc}")
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            fail(f"{path} is not a JWK Set (a JSON object with a \"keys\" array)")
        keys.extend(document["keys"])
    return {"keys": keys}
