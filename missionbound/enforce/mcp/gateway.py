"""The Mission-aware MCP gateway (PROFILE.md section 13; docs/mcp.md): a real MCP server
(the SDK's low-level ``Server`` over streamable HTTP, stateless, JSON responses) in front of
one upstream MCP server, with the PEP of :mod:`.pep` on every request.

On the wire, at the application's root path (``<mount>`` for :func:`mount_gateway`):

- every HTTP request carries a Mission-bound DPoP access token for the gateway's resource,
  checked before any JSON-RPC is read; without one, or with a bad one, HTTP 401/403 and a
  ``WWW-Authenticate`` challenge pointing to the RFC 9728 metadata (``resource_metadata``),
  which lists the Authorization Server: the SDK's own OAuth client starts from there;
- ``tools/list``: the upstream's tools the token grants here, definitions unchanged;
- ``tools/call``: decided, verified, forwarded, reported (:class:`~.pep.McpPep`); refusals as
  JSON-RPC errors ``-32001`` ``{"reason", "evaluation_id"}``, ``-32602``, ``-32603``;
- ``/metrics``: Prometheus text (:mod:`.metrics`), unauthenticated (operators' network).

Stateless: every HTTP request is served by its own short-lived session manager, so nothing
lives between requests, any replica answers any request, and the application needs no
lifespan (it works mounted inside another application, whose sub-application lifespans
Starlette does not run). The upstream's ``Mcp-Param-*`` header check of the 2026 protocol is
not applied (``get_tool_input_schema`` answers "nothing to validate"): the gateway routes on
the JSON body only, and the check would list the upstream's tools a second time per call.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, Final

import structlog
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from missionbound.enforce.mcp.errors import ToolRefused, UpstreamFailed
from missionbound.enforce.mcp.metrics import CONTENT_TYPE, GatewayMetrics
from missionbound.enforce.mcp.pep import TOKEN_KEY, UNLISTED_TOOL, McpPep, PdpLike
from missionbound.enforce.mcp.upstream import Upstream, UpstreamUnavailable
from missionbound.enforce.rs.errors import RSRefusal
from missionbound.enforce.rs.guard import MissionGuard, Tier, metadata_path
from missionbound.protocol.access_tokens import AccessToken
from missionbound.protocol.jwks import KeySource

log = structlog.get_logger("missionbound.enforce.mcp")

SERVER_NAME: Final = "missionbound-mcp-gateway"
METRICS_PATH: Final = "/metrics"
MCP_METHODS: Final = ["GET", "POST", "DELETE"]


def gateway_metadata(guard: MissionGuard) -> dict[str, Any]:
    """The gateway's RFC 9728 document: the guard's, whose tier is RS-D whatever the guard
    was built with (the gateway asks the PDP about every ``tools/call``)."""
    return {**guard.metadata(), "mission_enforcement_tier": Tier.RS_D.value}


class AuthenticatedMcp:
    """ASGI: authenticate with ``pep`` (the refusal answered as the RS kit does), put the
    token at ``scope[TOKEN_KEY]`` and hand the request to ``app``, an MCP transport."""

    def __init__(self, app: Any, pep: McpPep) -> None:
        self.app = app
        self.pep = pep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            token = await self.pep.authenticate(request)
        except RSRefusal as refusal:
            await self.pep.guard.refusal_response(refusal)(scope, receive, send)
            return
        scope[TOKEN_KEY] = token
        await self.app(scope, receive, send)


def token_of(ctx: ServerRequestContext[Any, Any]) -> AccessToken:
    """The verified token of the HTTP request a handler serves; refused when there is none
    (a transport that did not pass through :class:`AuthenticatedMcp`: fail closed)."""
    request = ctx.request
    token = request.scope.get(TOKEN_KEY) if isinstance(request, Request) else None
    if not isinstance(token, AccessToken):
        raise ToolRefused("unauthenticated", "this MCP server needs a Mission-bound access "
                          "token on every HTTP request", evaluation_id=None)
    return token


def build_gateway_server(pep: McpPep, upstream: Upstream, *,
                         name: str = SERVER_NAME) -> Server[Any]:
    """The gateway's MCP server: ``tools/list`` and ``tools/call`` through ``pep`` to
    ``upstream``."""

    async def list_tools(ctx: ServerRequestContext[Any, Any],
                         params: PaginatedRequestParams | None) -> ListToolsResult:
        token = token_of(ctx)
        if params is not None and params.cursor is not None:
            # One page, always: a cursor the gateway never gave is a caller's mistake.
            raise MCPError(INVALID_PARAMS, "unknown cursor")
        try:
            tools = await upstream.list_tools()
        except UpstreamUnavailable as exc:
            log.warning("mcp_upstream_unavailable", resource=pep.resource, detail=str(exc))
            raise UpstreamFailed("the tool server cannot be reached just now") from None
        except Exception as exc:  # never exception text on the wire (older clients get it)
            log.error("mcp_gateway_failed", resource=pep.resource, method="tools/list",
                      detail=f"{type(exc).__name__}: {exc}"[:300])
            raise UpstreamFailed("the tool list cannot be had just now") from None
        return ListToolsResult(tools=pep.visible_tools(token, tools))

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: CallToolRequestParams) -> CallToolResult:
        token = token_of(ctx)
        refusal: MCPError | None = None
        result: CallToolResult | None = None
        try:
            async with upstream.open() as session:
                tools = await session.list_tools()
                try:
                    result = await pep.call_tool(token, params.name, params.arguments, tools,
                                                 session.call_tool)
                except MCPError as refused:
                    # Raised once the session is closed: never through the SDK client's
                    # task groups.
                    refusal = refused
        except UpstreamUnavailable as exc:
            log.warning("mcp_upstream_unavailable", resource=pep.resource, tool=params.name,
                        detail=str(exc))
            pep.metrics.record(UNLISTED_TOOL, "error", "upstream_unavailable", 0.0)
            raise UpstreamFailed("the tool server cannot be reached just now") from None
        except Exception as exc:  # never exception text on the wire (older clients get it)
            log.error("mcp_gateway_failed", resource=pep.resource, tool=params.name[:64],
                      detail=f"{type(exc).__name__}: {exc}"[:300])
            raise UpstreamFailed() from None
        if refusal is not None:
            raise refusal
        assert result is not None
        return result

    return Server(name, version=version("missionbound"), title="Mission-aware MCP gateway",
                  on_list_tools=list_tools, on_call_tool=call_tool,
                  get_tool_input_schema=lambda _name: None)


class _StatelessMcp:
    """Streamable HTTP, stateless, JSON responses: a session manager per HTTP request."""

    def __init__(self, server: Server[Any], *, max_body_bytes: int,
                 transport_security: TransportSecuritySettings | None) -> None:
        self.server = server
        self.max_body_bytes = max_body_bytes
        self.transport_security = transport_security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = StreamableHTTPSessionManager(
            app=self.server, json_response=True, stateless=True,
            security_settings=self.transport_security,
            max_request_body_size=self.max_body_bytes)
        async with manager.run():
            await manager.handle_request(scope, receive, send)


def build_gateway_app(
    *,
    resource: str,
    upstream: Upstream,
    guard: MissionGuard,
    pdp: PdpLike,
    permit_keys: KeySource | None = None,
    permit_issuer: str | None = None,
    metrics: GatewayMetrics | None = None,
    pep: McpPep | None = None,
    transport_security: TransportSecuritySettings | None = None,
) -> Starlette:
    """The gateway for ``resource`` in front of ``upstream``: credentials checked by
    ``guard`` (built for ``resource``), calls decided by ``pdp`` (a
    :class:`~missionbound.enforce.rs.PdpClient` with this gateway's PEP credential),
    permits verified against ``permit_keys`` (the PDP's keys) from ``permit_issuer``
    (default: the guard's Mission origin). ``pep`` replaces the one built from these.
    ``transport_security``: the SDK's Host/Origin checks (off by default: every request
    is authenticated, and a browser cannot make a DPoP proof).

    Routes: the MCP endpoint at ``/``, ``/metrics``, and the RFC 9728 document at the
    resource's well-known path (served when this application is the host's root; a host
    that mounts it uses :func:`mount_gateway`). ``app.state``: ``pep``, ``metrics``,
    ``upstream``, ``guard``, ``mcp_endpoint`` (the authenticated MCP ASGI endpoint)."""
    if pep is None:
        pep = McpPep(resource=resource, guard=guard, pdp=pdp, permit_keys=permit_keys,
                     permit_issuer=permit_issuer, metrics=metrics)
    elif pep.resource != resource:
        raise ValueError(f"the PEP enforces {pep.resource!r}, not {resource!r}")
    endpoint = AuthenticatedMcp(
        _StatelessMcp(build_gateway_server(pep, upstream), max_body_bytes=guard.max_body_bytes,
                      transport_security=transport_security), pep)
    current = pep

    async def metrics_text(_: Request) -> Response:
        return Response(current.metrics.render(), media_type=CONTENT_TYPE)

    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse(gateway_metadata(guard))

    app = Starlette(routes=[
        Route("/", endpoint, methods=MCP_METHODS),
        Route(METRICS_PATH, metrics_text, methods=["GET"]),
        Route(metadata_path(resource), metadata, methods=["GET"]),
    ])
    app.state.pep = pep
    app.state.metrics = pep.metrics
    app.state.upstream = upstream
    app.state.guard = guard
    app.state.mcp_endpoint = endpoint
    return app


def mount_gateway(host: Starlette, path: str, gateway: Starlette) -> None:
    """Serve ``gateway`` at ``path`` of ``host``: the MCP endpoint at ``path`` exactly (no
    redirect to ``path/``: clients sign the URL they address, DPoP ``htu``), the rest under
    it, and the RFC 9728 document at the host root's well-known path (section 3.1)."""
    guard: MissionGuard = gateway.state.guard

    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse(gateway_metadata(guard))

    path = path.rstrip("/")
    if path and not path.startswith("/"):
        raise ValueError(f"the mount path must start with '/', not {path!r}")
    host.router.routes.append(Route(metadata_path(guard.resource), metadata, methods=["GET"]))
    if path:
        host.router.routes.append(Route(path, gateway.state.mcp_endpoint, methods=MCP_METHODS))
    # At the host root ("" or "/") the gateway's own "/" route is the endpoint.
    host.router.routes.append(Mount(path, gateway))


__all__ = [
    "AuthenticatedMcp", "build_gateway_app", "build_gateway_server", "gateway_metadata",
    "mount_gateway", "token_of",
]
