"""Tool definitions read from real MCP servers, for tool-manifest binding at approval
(runtime-digest 5.8; :mod:`missionbound.protocol.tool_manifest`).

Two :class:`~missionbound.protocol.tool_manifest.ToolDefinitionSource` implementations, both
reading ``tools/list`` with the SDK's own client, so the definitions are the ones an agent and
the gateway see:

- :class:`McpToolDefinitions`: upstream servers over streamable HTTP, by resource URI;
- :class:`InProcessToolDefinitions`: ``MCPServer``/``Server`` instances in this process (the
  demo tenant's payments server), no network.

:class:`CombinedToolDefinitions` asks several sources in turn (the demo tenant's in-process
server next to the operator's ``mcp_upstreams``).

The approval path is synchronous (a FastAPI worker thread), the SDK asynchronous: each read
runs its own event loop (``anyio.run``) in the calling thread, bounded by ``timeout_seconds``
as a whole (connect, handshake, every page). Any failure is
:class:`~missionbound.protocol.tool_manifest.ToolDefinitionsUnavailable`, so approval fails
closed. The SDK client's response cache is off: a definition read for a binding is never a
cached one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import anyio
from mcp import Client
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp_types import Tool

from missionbound.protocol.tool_manifest import ToolDefinitionSource, ToolDefinitionsUnavailable

DEFAULT_TIMEOUT_SECONDS: Final = 5.0
# A tools/list longer than this many pages is not a tool server we bind to (a cursor loop).
MAX_PAGES: Final = 32

_T = TypeVar("_T")


def definition_of(tool: Tool) -> dict[str, Any]:
    """One tool's definition object as ``tools/list`` carries it: wire (alias) names, absent
    members omitted. What the AS digests at approval and the gateway digests per call, so
    both must build it here."""
    return tool.model_dump(by_alias=True, exclude_none=True, mode="json")


def definitions_by_name(tools: list[Tool]) -> dict[str, dict[str, Any]]:
    """Tool name -> definition. Two tools of one name make the listing ambiguous: which one
    was approved could not be told, so it is refused."""
    found: dict[str, dict[str, Any]] = {}
    for tool in tools:
        if tool.name in found:
            raise ToolDefinitionsUnavailable(f"the tool list names {tool.name!r} twice")
        found[tool.name] = definition_of(tool)
    return found


async def list_all_tools(client: Client) -> list[Tool]:
    """Every page of ``tools/list`` (a cursor is followed at most :data:`MAX_PAGES` times)."""
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="refresh")
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise ToolDefinitionsUnavailable(f"tools/list has more than {MAX_PAGES} pages")


def _run_blocking(work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work`` to completion from synchronous code. Called from a thread that already
    runs an event loop (an async test, say), it runs in a helper thread instead: a second
    loop cannot start in a thread that has one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(work)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, work).result()


def _unavailable_in(error: BaseException) -> ToolDefinitionsUnavailable | None:
    """Our own refusal, possibly wrapped in the exception groups of the SDK's task groups."""
    if isinstance(error, ToolDefinitionsUnavailable):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _unavailable_in(inner)
            if found is not None:
                return found
    return None


def _read(target: Server[Any] | MCPServer | str, where: str,
          timeout_seconds: float) -> dict[str, dict[str, Any]]:
    async def read() -> list[Tool]:
        with anyio.fail_after(timeout_seconds):
            async with Client(target, cache=None, read_timeout_seconds=timeout_seconds) \
                    as client:
                return await list_all_tools(client)

    try:
        tools = _run_blocking(read)
    except TimeoutError:
        raise ToolDefinitionsUnavailable(
            f"{where} did not list its tools within {timeout_seconds:g} s") from None
    except Exception as exc:  # the transport, the handshake, a JSON-RPC error: all unusable
        found = _unavailable_in(exc)
        if found is not None:
            raise found from None
        raise ToolDefinitionsUnavailable(
            f"{where} could not list its tools: {type(exc).__name__}") from exc
    return definitions_by_name(tools)


class McpToolDefinitions:
    """Tool definitions of upstream MCP servers over streamable HTTP: ``upstreams`` maps a
    resource URI (what Authority Set entries name) to its server's MCP endpoint URL."""

    def __init__(self, upstreams: Mapping[str, str], *,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._upstreams = dict(upstreams)
        self._timeout = timeout_seconds

    def definitions(self, resource: str) -> dict[str, dict[str, Any]] | None:
        url = self._upstreams.get(resource)
        if url is None:
            return None
        # The URL, not the resource, names the server in errors: it is what an operator
        # would check, and the message never reaches the client (only the error code).
        return _read(url, f"the MCP server at {url}", self._timeout)


class InProcessToolDefinitions:
    """Tool definitions of MCP servers running in this process (no network): ``servers``
    maps a resource URI to the ``MCPServer`` (or low-level ``Server``) serving it."""

    def __init__(self, servers: Mapping[str, MCPServer | Server[Any]], *,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._servers = dict(servers)
        self._timeout = timeout_seconds

    def definitions(self, resource: str) -> dict[str, dict[str, Any]] | None:
        server = self._servers.get(resource)
        if server is None:
            return None
        return _read(server, f"the in-process MCP server of {resource}", self._timeout)


class CombinedToolDefinitions:
    """Several sources as one: the first that knows a resource answers for it (its failure
    too: a later source is never asked in place of one that should know, so an unreadable
    upstream still fails approval closed)."""

    def __init__(self, *sources: ToolDefinitionSource) -> None:
        self._sources = sources

    def definitions(self, resource: str) -> Mapping[str, Mapping[str, Any]] | None:
        for source in self._sources:
            found = source.definitions(resource)
            if found is not None:
                return found
        return None
