"""The agent side: what a client of a Mission-bound Authorization Server and its Resource
Servers runs (the agent SDK).

::

    from missionbound.client import MissionClient, PepCredentials

    with MissionClient(issuer, "demo-agent", client_secret="demo-agent-secret") as client:
        pending = client.submit_intent(intent, login_hint="alice")   # PAR + PKCE + DPoP
        mission = client.wait_for_approval(pending)                  # consent_url, callback
        mission.request("GET", f"{issuer}/demo/erp/invoices")        # an API (RS kit)
        with mission.mcp(f"{issuer}/demo/mcp") as tools:             # tools via the gateway
            tools.call_tool("get_invoice", {"invoice_id": "inv-acme-1"})

- :mod:`missionbound.client.sync` (:class:`MissionClient`, :class:`Mission`) and
  :mod:`missionbound.client.agent` (:class:`AsyncMissionClient`, :class:`AsyncMission`):
  the same client, blocking and ``async``;
- :mod:`missionbound.client.tools`: permits of the PDP, local tools through the runner, MCP
  tools through the gateway;
- :mod:`missionbound.client.errors`: what can go wrong, one class each
  (:class:`MissionRevoked`, :class:`ConstraintExceeded`, :class:`ToolNotGranted`, ...);
- :mod:`missionbound.client.dpop` and :mod:`missionbound.client.mcp_auth`: DPoP proofs and
  ``DPoPAuth`` for the official ``mcp`` client.

Like the enforcement points, this package never imports the Authorization Server's code or
store (an agent runs on another machine); it uses the enforcement points' own pieces (the
local tool runner, the AuthZEN request shape) and :mod:`missionbound.protocol`.
"""

from missionbound.client.agent import AsyncMission, AsyncMissionClient
from missionbound.client.errors import (
    ActionDenied,
    ArgumentsChanged,
    CapabilityDrift,
    ConsentRejected,
    ConstraintExceeded,
    InvalidToolArguments,
    MissionClientError,
    MissionInactive,
    MissionRevoked,
    OAuthError,
    PdpUnavailable,
    PermitRefused,
    ToolNotGranted,
)
from missionbound.client.oauth import PendingMission, TokenSet
from missionbound.client.sync import LocalTools, McpTools, Mission, MissionClient
from missionbound.client.tools import AsyncLocalTools, AsyncMcpTools, PepCredentials, Permit

__all__ = [
    "ActionDenied", "ArgumentsChanged", "AsyncLocalTools", "AsyncMcpTools", "AsyncMission",
    "AsyncMissionClient", "CapabilityDrift", "ConsentRejected", "ConstraintExceeded",
    "InvalidToolArguments", "LocalTools", "McpTools", "Mission", "MissionClient",
    "MissionClientError", "MissionInactive", "MissionRevoked", "OAuthError", "PdpUnavailable",
    "PendingMission", "PepCredentials", "Permit", "PermitRefused", "TokenSet",
    "ToolNotGranted",
]
