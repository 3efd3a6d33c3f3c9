"""The PEP inside an MCP server owner's own server (PROFILE.md section 13, "also usable
in-process"): the same checks as the gateway (:mod:`.pep`), with no upstream hop.

:func:`protect` installs :class:`MissionMcpMiddleware` on an ``MCPServer`` (the SDK's
context-tier middleware, which wraps every inbound message) and returns the server's
streamable HTTP application (stateless, JSON responses) behind the same HTTP authentication
as the gateway, with the RFC 9728 document::

    app = protect(server, pep)          # serve it (uvicorn runs its lifespan)

``tools/list`` answers the tools the token grants; ``tools/call`` is decided by the PDP,
its permit verified, then the tool runs (``call_next``) and its outcome is reported. Only
tools are governed: any other request but the protocol's own housekeeping (``initialize``,
``ping``, ``server/discover``) is refused ``-32001`` ``method_not_governed`` (fail closed), so
a resource or prompt added to the server later is not silently outside the Mission.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ListToolsResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from missionbound.enforce.mcp.errors import InvalidToolArguments, ToolRefused
from missionbound.enforce.mcp.gateway import AuthenticatedMcp, gateway_metadata, token_of
from missionbound.enforce.mcp.pep import McpPep
from missionbound.enforce.rs.guard import metadata_path

HOUSEKEEPING: Final = frozenset({"initialize", "ping", "server/discover"})


class MissionMcpMiddleware:
    """A ``ServerMiddleware`` for ``server``, enforcing through ``pep``."""

    def __init__(self, server: MCPServer, pep: McpPep) -> None:
        self.server = server
        self.pep = pep

    async def __call__(self, ctx: ServerRequestContext[Any, Any],
                       call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None or ctx.method in HOUSEKEEPING:
            return await call_next(ctx)  # notifications and the handshake
        if ctx.method == "tools/list":
            token = token_of(ctx)
            listed = await call_next(ctx)
            result = (listed if isinstance(listed, ListToolsResult)
                      else ListToolsResult.model_validate(listed))
            return result.model_copy(update={"tools": self.pep.visible_tools(token,
                                                                             result.tools)})
        if ctx.method == "tools/call":
            token = token_of(ctx)
            params = dict(ctx.params or {})
            name = params.get("name")
            arguments = params.get("arguments")
            if not isinstance(name, str) or not (arguments is None
                                                 or isinstance(arguments, dict)):
                # Refused here, whatever the SDK would do after: nothing ungoverned runs.
                raise InvalidToolArguments("tools/call needs a tool name and an arguments "
                                           "object")

            async def run(tool: str, checked: dict[str, Any]) -> CallToolResult:
                # The tool runs with exactly the arguments the permit was verified for.
                answer = await call_next(replace(ctx, params={**params, "name": tool,
                                                              "arguments": checked}))
                return (answer if isinstance(answer, CallToolResult)
                        else CallToolResult.model_validate(answer))

            return await self.pep.call_tool(token, name, arguments,
                                            await self.server.list_tools(), run)
        raise ToolRefused("method_not_governed", f"{ctx.method[:64]!r} is not governed by "
                          "the Mission here", evaluation_id=None)


def protect(server: MCPServer, pep: McpPep, *, path: str = "/mcp",
            transport_security: TransportSecuritySettings | None = None) -> Starlette:
    """Install :class:`MissionMcpMiddleware` on ``server`` and return its streamable HTTP
    application at ``path`` (stateless, JSON responses), every request authenticated by
    ``pep``, and the RFC 9728 document at ``pep.resource``'s well-known path. Serve it with
    its lifespan (the SDK's session manager)."""
    server.middleware.append(MissionMcpMiddleware(server, pep))
    inner = server.streamable_http_app(streamable_http_path=path, stateless_http=True,
                                       json_response=True,
                                       transport_security=transport_security
                                       or TransportSecuritySettings(
                                           enable_dns_rebinding_protection=False))
    guard = pep.guard

    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse(gateway_metadata(guard))

    authenticated = AuthenticatedMcp(inner, pep)
    app = Starlette(routes=[Route(metadata_path(pep.resource), metadata, methods=["GET"]),
                            Route(path, authenticated, methods=["GET", "POST", "DELETE"])],
                    lifespan=lambda _app: server.session_manager.run())
    app.state.pep = pep
    return app


__all__ = ["MissionMcpMiddleware", "protect"]
