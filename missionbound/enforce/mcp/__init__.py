"""The Mission-aware MCP gateway and its parts (PROFILE.md section 13; docs/mcp.md).

- :func:`build_gateway_app`: the gateway, an MCP server in front of one :class:`Upstream`,
  every ``tools/call`` decided by the Mission PDP (:class:`McpPep`); :func:`mount_gateway`
  serves it inside another application;
- :func:`protect` / :class:`MissionMcpMiddleware`: the same PEP inside an ``MCPServer``;
- :class:`McpToolDefinitions` / :class:`InProcessToolDefinitions` (several:
  :class:`CombinedToolDefinitions`): tool definitions for tool-manifest binding at approval
  (:mod:`.definitions`).
"""

from missionbound.enforce.mcp.definitions import (
    CombinedToolDefinitions,
    InProcessToolDefinitions,
    McpToolDefinitions,
)
from missionbound.enforce.mcp.errors import (
    TOOL_REFUSED,
    InvalidToolArguments,
    ToolRefused,
    UpstreamFailed,
)
from missionbound.enforce.mcp.gateway import build_gateway_app, mount_gateway
from missionbound.enforce.mcp.metrics import GatewayMetrics
from missionbound.enforce.mcp.middleware import MissionMcpMiddleware, protect
from missionbound.enforce.mcp.pep import McpPep, MemoryPermitStore, PdpLike
from missionbound.enforce.mcp.upstream import Upstream, UpstreamUnavailable

__all__ = [
    "TOOL_REFUSED",
    "CombinedToolDefinitions",
    "GatewayMetrics",
    "InProcessToolDefinitions",
    "InvalidToolArguments",
    "McpPep",
    "McpToolDefinitions",
    "MemoryPermitStore",
    "MissionMcpMiddleware",
    "PdpLike",
    "ToolRefused",
    "Upstream",
    "UpstreamFailed",
    "UpstreamUnavailable",
    "build_gateway_app",
    "mount_gateway",
    "protect",
]
