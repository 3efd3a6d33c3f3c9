"""The application factory. Everything the app needs arrives as an argument and lives in
``app.state``; two apps in one process (tests, a replica pair) share nothing.

The app serves what its ``role`` is. The Mission Issuer (``issuer``) serves everything, and
with the demo tenant also the demo ERP API at ``/demo/erp`` (:mod:`missionbound.demo.erp`, a
Resource Server that reaches this AS over HTTP like any other). A Resource AS
(``resource_as``: PROFILE.md section 11, docs/resource-as.md) holds no Mission and serves
only ``/token``, ``/jwks``, ``/introspect``, ``/revoke``, ``/healthz`` and its metadata: no
PAR, authorization, consent, sign-in, console, Mission governance, Shared Signals or
registration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from importlib.metadata import version
from typing import Any

import httpx
from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer
from sqlalchemy import Engine

from missionbound.config import Settings
from missionbound.demo.erp import build_erp_app
from missionbound.demo.payments_mcp import Ledger, build_payments_server
from missionbound.enforce.mcp import (
    CombinedToolDefinitions,
    InProcessToolDefinitions,
    McpToolDefinitions,
    Upstream,
    build_gateway_app,
    mount_gateway,
)
from missionbound.enforce.rs import (
    MissionGuard,
    MissionStateView,
    MissionStatusSource,
    Tier,
    TrustedIssuer,
    add_metadata_route,
)
from missionbound.issuer.server import MissionIssuer
from missionbound.issuer.signal_dispatcher import build_dispatcher
from missionbound.issuer.trusted_origins import TrustedOrigins, attach_trusted_origins
from missionbound.mission.lifecycle import LifecyclePolicy
from missionbound.protocol.jwks import JwksCache
from missionbound.runtime.evidence import EvidenceLog
from missionbound.runtime.execution import ExecutionIntake
from missionbound.runtime.pdp import MissionPDP, PepCaller
from missionbound.runtime.tenants import load_tenants
from missionbound.store.change_feed import ChangeFeed
from missionbound.store.engine import create_engine_for
from missionbound.store.mission_cache import MissionStateCache
from missionbound.store.transactions import Store
from missionbound.tenant import Tenant, demo_credentials, load_tenant
from missionbound.web import (
    approval,
    authzen,
    console,
    governance,
    health,
    jwks,
    metadata,
    metrics,
    oauth,
    resource_as,
    ssf,
    token_management,
)
from missionbound.web.colocated_pdp import CoLocatedPdp
from missionbound.web.errors import install_error_handlers
from missionbound.web.expiry_sweep import sweep_periodically
from missionbound.web.middleware import BodySizeLimitMiddleware, RequestLogMiddleware
from missionbound.web.pages import mount_static

DEMO_ERP_PATH = "/demo/erp"
DEMO_MCP_PATH = "/demo/mcp"
# The demo payments server's ledger (what it actually executed), in the data directory.
DEMO_PAYMENTS_LEDGER = "demo-payments-ledger.jsonl"
DEMO_RS_CLIENT_ID = "demo-rs"  # the demo Resource Servers' credential (demo/tenant.toml)
# Each call of the demo ERP to the AS (JWKS, Mission Status, stream API) is bounded by this.
DEMO_ERP_HTTP_TIMEOUT = 5.0


def create_app(
    settings: Settings,
    *,
    tenant: Tenant | None = None,
    engine: Engine | None = None,
    http_client: httpx.Client | None = None,
) -> FastAPI:
    """Build the HTTP application.

    ``tenant`` defaults to :func:`~missionbound.tenant.load_tenant` of ``settings``; ``engine``
    to a new engine for ``settings.database_url``, disposed when the app shuts down (an engine
    passed in belongs to the caller). Migrations are the caller's job (``serve`` runs them).
    ``http_client`` is what the app calls other servers with: the trusted origins (resource_as
    role), or this AS itself for the demo ERP API (issuer role, demo tenant: its JWKS, Mission
    Status, Shared Signals streams and Mission PDP, at the issuer URL). By default one of the
    app's own, with bounded timeouts, closed at shutdown; one passed in belongs to the caller
    (in-process tests pass a client that reaches the app without a network).
    """
    tenant = tenant if tenant is not None else load_tenant(settings)
    owns_engine = engine is None
    db = engine if engine is not None else create_engine_for(settings.database_url)
    if settings.role == "resource_as":
        return _resource_as_app(settings, tenant, db, owns_engine, http_client)

    erp_http = None
    if tenant.is_demo:
        erp_http = http_client if http_client is not None else httpx.Client(
            timeout=DEMO_ERP_HTTP_TIMEOUT)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = None
        if settings.expiry_sweep_seconds > 0:
            sweeper = asyncio.create_task(sweep_periodically(
                db, interval_seconds=settings.expiry_sweep_seconds,
                policy=LifecyclePolicy(
                    consent_window=timedelta(seconds=settings.consent_window_seconds))))
        change_feed = app.state.change_feed
        change_feed.start()  # PostgreSQL: LISTEN on its own connection (store/change_feed.py)
        dispatcher = app.state.signal_dispatcher
        if settings.signals_delivery_seconds > 0:
            dispatcher.start()  # Shared Signals fan-out and push (issuer/signal_dispatcher.py)
        erp_signals = app.state.demo_erp.state.signals if app.state.demo_erp else None
        # The demo ERP's stream can only be made once this server answers: in the
        # background, with bounded retries (demo/erp.py ErpSignals.run).
        subscriber = asyncio.create_task(erp_signals.run()) if erp_signals is not None else None
        try:
            yield
        finally:
            await dispatcher.stop()
            await asyncio.to_thread(change_feed.stop)
            for task in (sweeper, subscriber):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if erp_http is not None and http_client is None:
                erp_http.close()
            if owns_engine:
                db.dispose()

    app = _new_app(lifespan)
    app.state.settings = settings
    app.state.tenant = tenant
    app.state.engine = db
    app.state.issuer = MissionIssuer(settings=settings, tenant=tenant, store=Store(db))
    # Tool-manifest binding for gateways in front of upstream MCP servers elsewhere
    # (docs/mcp.md): without it their Missions carry no binding and drift is not refused.
    app.state.issuer.tool_definitions = (McpToolDefinitions(settings.mcp_upstreams)
                                         if settings.mcp_upstreams else None)
    token_management.register_token_management(app.state.issuer)
    app.state.signal_dispatcher = build_dispatcher(app.state.issuer)
    # Mission change announcements and the Mission state cache (docs/scale-out.md).
    app.state.change_feed = ChangeFeed(db)
    app.state.mission_cache = MissionStateCache(
        app.state.change_feed, max_age_seconds=settings.mission_cache_max_age_seconds)
    app.state.issuer.mission_cache = app.state.mission_cache
    dispatcher = app.state.signal_dispatcher
    app.state.change_feed.subscribe(lambda _mission, _version: dispatcher.wake())
    # The PDP (PROFILE.md section 12, docs/authzen.md): resource-policy tenants parsed and
    # validated now (a bad folder stops the start), and the Mission PDP over them.
    app.state.pdp_tenants = load_tenants(settings.pdp_tenants)
    app.state.mission_pdp, app.state.execution_intake = _build_mission_pdp(app, settings)

    _install_middleware(app, settings)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(metadata.router)
    app.include_router(jwks.router)
    app.include_router(oauth.router)
    app.include_router(token_management.router)
    app.include_router(approval.router)
    app.include_router(governance.router)
    app.include_router(console.router)
    app.include_router(ssf.router)
    authzen.install(app)
    app.state.demo_erp = None
    app.state.demo_mcp = None
    app.state.demo_payments_ledger = None
    if erp_http is not None:
        _mount_demo_erp(app, settings, tenant, erp_http)
        _mount_demo_mcp(app, settings, tenant, erp_http)
    mount_static(app)
    return app


def _build_mission_pdp(app: FastAPI, settings: Settings) -> tuple[MissionPDP, ExecutionIntake]:
    """The Mission PDP (runtime/pdp.py) over this app's issuer, Mission state cache and
    tenants, and the intake where executors report what they did with its permits
    (runtime/execution.py), sharing one evidence log. (An app without them,
    ``app.state.mission_pdp = None``, answers 503 on those routes: web/authzen.py.)"""
    evidence = EvidenceLog(issuer_url=settings.issuer, signer=app.state.issuer.signer)
    pdp = MissionPDP(issuer=app.state.issuer, mission_cache=app.state.mission_cache,
                     evidence=evidence, tenants=app.state.pdp_tenants,
                     on_decision=app.state.metrics.count_pdp_decision)
    return pdp, ExecutionIntake(app.state.issuer.store, evidence)


def _mount_demo_erp(app: FastAPI, settings: Settings, tenant: Tenant,
                    http_client: httpx.Client) -> None:
    """The demo ERP API at ``/demo/erp`` (DESIGN.md "The demo tenant"), and its RFC 9728
    Protected Resource Metadata at ``/.well-known/oauth-protected-resource/demo/erp``
    (section 3.1: the well-known suffix goes at the host's root, outside the mounted app).
    It is an RS-D Resource Server: it asks this app's Mission PDP (``/access/v1/evaluation``)
    about every call, over ``http_client`` with the ``demo-rs`` credential, like its JWKS and
    Mission Status requests."""
    resource = settings.issuer + DEMO_ERP_PATH
    secret = next(credential.secret for credential in demo_credentials()
                  if credential.kind == "client" and credential.name == DEMO_RS_CLIENT_ID)
    catalog_entry = tenant.catalog.resources.get(resource)
    erp = build_erp_app(
        issuer=settings.issuer, resource=resource, http_client=http_client,
        rs_client_id=DEMO_RS_CLIENT_ID, rs_client_secret=secret,
        staleness_seconds=settings.demo_erp_staleness_seconds,
        labels=catalog_entry.labels if catalog_entry is not None else (),
        signals=settings.demo_erp_signals,
    )
    add_metadata_route(app, erp.state.guard)
    app.mount(DEMO_ERP_PATH, erp)
    app.state.demo_erp = erp


def _demo_upstream(settings: Settings, resource: str
                   ) -> tuple[Upstream, MCPServer | None, Ledger | None]:
    """The MCP server the demo gateway fronts: the one ``mcp_upstreams`` names for its
    resource, else the demo payments server in process (and its ledger)."""
    elsewhere = settings.mcp_upstreams.get(resource)
    if elsewhere is not None:
        return Upstream(elsewhere), None, None
    ledger = Ledger(settings.data_dir / DEMO_PAYMENTS_LEDGER)
    server = build_payments_server(ledger)
    return Upstream(server), server, ledger


def _mount_demo_mcp(app: FastAPI, settings: Settings, tenant: Tenant,
                    http_client: httpx.Client) -> None:
    """The Mission-aware MCP gateway at ``/demo/mcp`` (PROFILE.md section 13, docs/mcp.md)
    in front of the demo payments MCP server, in process (no network hop, no port), whose
    ledger is ``<data_dir>/demo-payments-ledger.jsonl`` (``app.state.demo_payments_ledger``).
    When ``mcp_upstreams`` names ``<issuer>/demo/mcp``, the gateway fronts that MCP server
    instead (your own, examples/mcp_server.py), and the demo payments server is not built.
    Like the demo ERP it reaches this AS's JWKS (tokens and permits) and Mission Status over
    ``http_client``; the Mission PDP and execution intake it asks in process, as ``demo-rs``
    (web/colocated_pdp.py). The issuer reads the tool definitions of the server the gateway
    calls at approval (tool-manifest binding), so a definition changed since is
    ``capability_drift`` at the gateway."""
    resource = settings.issuer + DEMO_MCP_PATH
    secret = next(credential.secret for credential in demo_credentials()
                  if credential.kind == "client" and credential.name == DEMO_RS_CLIENT_ID)
    catalog_entry = tenant.catalog.resources.get(resource)
    upstream, server, ledger = _demo_upstream(settings, resource)
    as_keys = JwksCache(f"{settings.issuer}/jwks", client=http_client)
    # RS-C before the PDP: a Mission the AS says is no longer active is refused for every
    # request, tools/list included (runtime-digest 8.5 step 2), as the demo ERP does.
    state = MissionStateView(
        MissionStatusSource(
            issuer=settings.issuer, status_endpoint=f"{settings.issuer}/mission/status",
            keys=as_keys, audience=resource, client_id=DEMO_RS_CLIENT_ID,
            client_secret=secret, client=http_client),
        staleness_seconds=settings.demo_erp_staleness_seconds)
    guard = MissionGuard(
        resource=resource, issuers=[TrustedIssuer(settings.issuer, keys=as_keys)],
        tier=Tier.RS_C, state=state,
        labels=catalog_entry.labels if catalog_entry is not None else (),
        dpop_required=True,  # sender-constrained tokens only (RFC 9449)
        public_base_url=settings.issuer, resource_name="Demo payments tools (MCP gateway)")
    # The PDP is this app's own: asked in process (no loopback HTTP hop on every call), as
    # the demo-rs PEP credential, with the same checks and evidence as over AuthZEN.
    caller = PepCaller(DEMO_RS_CLIENT_ID, tenant.clients[DEMO_RS_CLIENT_ID].audiences)
    pdp = CoLocatedPdp(app.state.mission_pdp, app.state.execution_intake, caller,
                       clock=app.state.issuer.clock)
    gateway = build_gateway_app(resource=resource,
                                upstream=upstream,
                                guard=guard, pdp=pdp, permit_keys=as_keys,
                                permit_issuer=settings.issuer)
    mount_gateway(app, DEMO_MCP_PATH, gateway)
    app.state.demo_mcp = gateway
    app.state.demo_payments_server = server
    app.state.demo_payments_ledger = ledger
    if server is None:
        return  # mcp_upstreams names this resource: its definitions are read from there
    in_process = InProcessToolDefinitions({resource: server})
    configured = app.state.issuer.tool_definitions
    # The in-process server answers first for its resource: it is what this gateway calls.
    app.state.issuer.tool_definitions = (
        in_process if configured is None else CombinedToolDefinitions(in_process, configured))


def _resource_as_app(settings: Settings, tenant: Tenant, db: Engine, owns_engine: bool,
                     http_client: httpx.Client | None) -> FastAPI:
    """The resource_as role: no Mission of its own, so no expiry sweep, change feed, Mission
    cache or Shared Signals; the trusted origins' keys and status client instead."""
    origins = TrustedOrigins.from_settings(settings, client=http_client)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            origins.close()
            if owns_engine:
                db.dispose()

    app = _new_app(lifespan)
    app.state.settings = settings
    app.state.tenant = tenant
    app.state.engine = db
    app.state.issuer = MissionIssuer(settings=settings, tenant=tenant, store=Store(db))
    app.state.trusted_origins = origins
    attach_trusted_origins(app.state.issuer, origins)
    resource_as.register_resource_as_endpoints(app.state.issuer)

    _install_middleware(app, settings)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(metadata.router)
    app.include_router(jwks.router)
    app.include_router(resource_as.router)
    app.include_router(resource_as.token_management_router())
    return app


def _new_app(lifespan: Any) -> FastAPI:
    app = FastAPI(
        title="missionbound",
        summary="Mission-Bound OAuth: Authorization Server, PDP and enforcement points",
        version=version("missionbound"),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.metrics = metrics.IssuerMetrics()  # this app's /metrics (web/metrics.py)
    return app


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    install_error_handlers(app)
    # add_middleware stacks outward: the request log wraps the body limit, so it sees 413s too.
    app.add_middleware(BodySizeLimitMiddleware, max_body_size=settings.max_request_body_size)
    app.add_middleware(RequestLogMiddleware, metrics=app.state.metrics)
