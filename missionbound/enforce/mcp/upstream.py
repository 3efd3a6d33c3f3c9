"""The MCP server behind the gateway (PROFILE.md section 13): one upstream, reached with the
official SDK's client, either over streamable HTTP (a URL) or in this process (an
``MCPServer`` or low-level ``Server``, no network).

Each gateway request opens one short client session (:meth:`Upstream.open`) and uses it for
both the listing the PEP decides on and the call it forwards, so a ``tools/call`` costs one
connection. The client's own response cache is off: what the PEP digests must be what the
upstream lists now.

The tool list may be kept for ``definitions_ttl_seconds`` (default 0: listed again for every
request). The trade-off: with 0 a changed definition is seen by the very next call
(``capability_drift`` at once), at the price of one ``tools/list`` per call; with a TTL the
upstream is asked less often, and a definition changed inside the window is only noticed
when it ends. Nothing the agent sends ever changes what is cached.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import httpx2
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolRequest, CallToolRequestParams, CallToolResult, Tool
from mcp_types.version import LATEST_MODERN_VERSION

from missionbound.enforce.mcp.definitions import MAX_PAGES

DEFAULT_TIMEOUT_SECONDS: Final = 30.0


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or did not answer as an MCP server (transport,
    protocol error, timeout, a listing that is not one)."""


class UpstreamSession:
    """One open client session to the upstream."""

    def __init__(self, upstream: Upstream, client: Client) -> None:
        self._upstream = upstream
        self._client = client

    async def list_tools(self) -> list[Tool]:
        """The upstream's tools (every page), from the TTL cache when it is fresh."""
        return await self._upstream._listing(self._client)

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> CallToolResult:
        """``tools/call`` upstream; the result as the upstream gave it (a tool error is a
        result with ``isError``). Sent as a plain request: validating the result against
        the output schema is the agent's client's business, not the gateway's."""
        request = CallToolRequest(params=CallToolRequestParams(name=name,
                                                               arguments=dict(arguments)))
        try:
            return await self._client.session.send_request(
                request, CallToolResult,
                request_read_timeout_seconds=self._upstream.timeout_seconds)
        except Exception as exc:
            # A JSON-RPC error, a timeout, a broken connection: whether the tool ran cannot
            # be told from here, so the gateway reports the call failed.
            raise UpstreamUnavailable(f"{self._upstream.description}: tools/call failed: "
                                      f"{type(exc).__name__}: {str(exc)[:200]}") from exc


class Upstream:
    """One upstream MCP server. ``target`` is its streamable HTTP endpoint URL (reached with
    ``http_client``, an ``httpx2.AsyncClient`` the caller owns, or one per session) or an
    in-process ``MCPServer``/``Server``. ``mode`` is the SDK client's protocol negotiation
    (``"auto"``: probe, fall back to the handshake; a modern version string skips the
    probe for an upstream known to speak it). By default a URL is probed, and an in-process
    server, which runs this very SDK, is spoken to in the SDK's latest modern version
    without a probe (one round trip less per gateway request)."""

    def __init__(self, target: str | MCPServer | Server[Any], *,
                 http_client: httpx2.AsyncClient | None = None,
                 definitions_ttl_seconds: float = 0.0,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 mode: ConnectMode | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if definitions_ttl_seconds < 0:
            raise ValueError("definitions_ttl_seconds must not be negative")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if isinstance(target, str) and not target.startswith(("http://", "https://")):
            raise ValueError(f"the upstream must be an http(s) URL, not {target!r}")
        self.target = target
        self.definitions_ttl_seconds = definitions_ttl_seconds
        self.timeout_seconds = timeout_seconds
        self.mode: ConnectMode = (mode if mode is not None else
                                  "auto" if isinstance(target, str) else LATEST_MODERN_VERSION)
        self._http = http_client
        self._clock = clock
        self._cached: tuple[float, list[Tool]] | None = None

    @property
    def description(self) -> str:
        """What the logs call this upstream (its URL, or the in-process server's name)."""
        return self.target if isinstance(self.target, str) else f"in-process {self.target.name}"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[UpstreamSession]:
        """A client session for one gateway request; :class:`UpstreamUnavailable` when it
        cannot be had or fails."""
        target: Any = self.target
        if isinstance(target, str):
            target = streamable_http_client(target, http_client=self._http)
        client = Client(target, cache=None, mode=self.mode,
                        read_timeout_seconds=self.timeout_seconds)
        async with AsyncExitStack() as stack:
            try:
                # Bounded by read_timeout_seconds (every request) and the HTTP client's own
                # connect timeout; a cancel scope here would not nest with the client's.
                await stack.enter_async_context(client)
            except Exception as exc:
                raise UpstreamUnavailable(f"{self.description}: {type(exc).__name__}: "
                                          f"{str(exc)[:200]}") from exc
            yield UpstreamSession(self, client)

    async def list_tools(self) -> list[Tool]:
        """The upstream's tools, in a session of their own."""
        async with self.open() as session:
            return await session.list_tools()

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> CallToolResult:
        """One ``tools/call`` upstream, in a session of its own."""
        async with self.open() as session:
            return await session.call_tool(name, arguments)

    async def _listing(self, client: Client) -> list[Tool]:
        cached = self._cached
        now = self._clock()
        if cached is not None and now - cached[0] < self.definitions_ttl_seconds:
            return list(cached[1])
        tools: list[Tool] = []
        cursor: str | None = None
        try:
            for _ in range(MAX_PAGES):
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                tools.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            else:
                raise UpstreamUnavailable(f"{self.description}: tools/list has more than "
                                          f"{MAX_PAGES} pages")
        except UpstreamUnavailable:
            raise
        except Exception as exc:
            raise UpstreamUnavailable(f"{self.description}: tools/list failed: "
                                      f"{type(exc).__name__}") from exc
        if self.definitions_ttl_seconds > 0:
            self._cached = (now, list(tools))
        return tools


__all__ = ["Upstream", "UpstreamSession", "UpstreamUnavailable"]
