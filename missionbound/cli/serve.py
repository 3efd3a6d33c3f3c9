"""``missionbound serve``: migrate, make sure a signing key exists, serve HTTP."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from missionbound.cli.common import (
    EXIT_USAGE,
    ConfigOption,
    DatabaseUrlOption,
    database_error,
    engine_from,
    fail,
    log,
    settings_from,
    stdout,
    tenant_from,
)
from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.store import Store
from missionbound.store.migrate import current_revision, head_revision, upgrade_engine
from missionbound.tenant import demo_credentials

# The issuer `make run` serves and the example agent assumes (examples/agent.py).
DEFAULT_LOCAL_ISSUER = "http://127.0.0.1:8000"
_UPSTREAM_SEPARATOR = re.compile(r"\s*=\s*(?=https?://)", re.IGNORECASE)


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
    pdp_tenant: Annotated[
        list[str] | None,
        typer.Option(
            "--pdp-tenant",
            metavar="NAME=DIR",
            help="Serve a resource-policy tenant (a folder of *.cedar policies, entities.json "
            "and optionally schema.cedarschema) at /pdp/NAME/access/v1/...; repeatable; adds "
            "to (and overrides by name) the pdp_tenants setting. See docs/authzen.md.",
            show_default=False,
        ),
    ] = None,
    mcp_upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--mcp-upstream",
            metavar="RESOURCE=URL",
            help="At approval, read the tools of the MCP gateway RESOURCE from the upstream "
            "MCP server at URL (streamable HTTP) and bind each granted tool to its definition; "
            "repeatable; adds to (and overrides by resource) the mcp_upstreams setting. See "
            "docs/mcp.md.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the server: apply migrations, then serve HTTP until interrupted.

    With no configuration this is the demo tenant, and its demo secrets are printed.
    """
    # Imported here: the other commands need neither uvicorn nor the web stack.
    import uvicorn

    from missionbound.runtime.tenants import TenantError, load_tenants
    from missionbound.web.app import create_app
    from missionbound.web.logs import configure_logging

    flags = {"config_file": config, "host": host, "port": port, "database_url": database_url,
             "issuer": issuer}
    settings = settings_from(**flags)
    if pdp_tenant:
        settings = settings_from(**flags, pdp_tenants={
            **settings.pdp_tenants, **parse_pdp_tenants(pdp_tenant)})
    if mcp_upstream:
        settings = settings_from(**flags, pdp_tenants=settings.pdp_tenants, mcp_upstreams={
            **settings.mcp_upstreams, **parse_mcp_upstreams(mcp_upstream)})
    try:
        # Parsed and validated before anything else starts: a tenant that cannot be served
        # is a configuration error, said plainly (the app loads them again in create_app).
        load_tenants(settings.pdp_tenants)
    except TenantError as exc:
        fail(str(exc), EXIT_USAGE)
    configure_logging(settings.log_level)
    tenant = tenant_from(settings)
    engine = engine_from(settings)
    try:
        before = current_revision(engine)
        upgrade_engine(engine)
        log.info(
            "database_ready",
            database=settings.database_url_for_display,
            migrated_from=before,
            revision=head_revision(),
        )
        # Every replica runs this; racing ones may each add a key, all published.
        kid = ensure_signing_key(Store(engine), datetime.now(UTC))
    except SQLAlchemyError as exc:
        engine.dispose()
        database_error(settings, exc)
    log.info("signing_key_ready", kid=kid)
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


def parse_pdp_tenants(values: list[str]) -> dict[str, Path]:
    """``--pdp-tenant NAME=DIR`` values as {name: folder}; a malformed or repeated one is a
    usage error."""
    tenants: dict[str, Path] = {}
    for value in values:
        name, separator, folder = value.partition("=")
        name, folder = name.strip(), folder.strip()
        if not separator or not name or not folder:
            raise typer.BadParameter(f"{value!r}: expected NAME=DIR, e.g. "
                                     "todo=examples/authzen-todo", param_hint="--pdp-tenant")
        if name in tenants:
            raise typer.BadParameter(f"tenant {name!r} is given twice",
                                     param_hint="--pdp-tenant")
        tenants[name] = Path(folder).expanduser()
    return tenants


def parse_mcp_upstreams(values: list[str]) -> dict[str, str]:
    """``--mcp-upstream RESOURCE=URL`` values as {resource: url}; a malformed or repeated one
    is a usage error (the URIs themselves are checked with the setting). Both sides are URLs
    and either may carry ``=`` in its query, so the split is at the first ``=`` that starts
    an http(s) URL."""
    upstreams: dict[str, str] = {}
    for value in values:
        parts = _UPSTREAM_SEPARATOR.split(value, maxsplit=1)
        resource, url = (parts[0].strip(), parts[1].strip()) if len(parts) == 2 else ("", "")
        if not resource or not url:
            raise typer.BadParameter(f"{value!r}: expected RESOURCE=URL, URL an http(s) URL",
                                     param_hint="--mcp-upstream")
        if resource in upstreams:
            raise typer.BadParameter(f"resource {resource!r} is given twice",
                                     param_hint="--mcp-upstream")
        upstreams[resource] = url
    return upstreams


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
        f"docs     {settings.issuer}/docs\n"
        f"console  {settings.issuer}/console/\n"
        f"demo ERP {settings.issuer}/demo/erp (a Resource Server, docs/resource-servers.md)\n"
        f"demo MCP {settings.issuer}/demo/mcp (the MCP gateway, docs/mcp.md)\n"
        "next     in another terminal: .venv/bin/python examples/agent.py --approve-as bob"
        + ("" if settings.issuer == DEFAULT_LOCAL_ISSUER else f" --issuer {settings.issuer}")
        + " (docs/quickstart.md)",
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
