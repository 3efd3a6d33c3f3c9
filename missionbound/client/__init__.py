"""The agent side: what a client of a Mission-bound Authorization Server and its Resource
Servers runs.

An agent holds a DPoP key (RFC 9449) and the DPoP-bound access tokens its Mission gives it,
and presents both to every Resource Server and MCP gateway it calls:

- :mod:`missionbound.client.dpop`: DPoP proofs made with the agent's private key;
- :mod:`missionbound.client.mcp_auth`: :class:`~missionbound.client.mcp_auth.DPoPAuth`, an
  ``httpx2`` authentication flow for the official ``mcp`` client's streamable HTTP
  transport (``Authorization: DPoP`` + a fresh proof per request, server nonces
  remembered), and :func:`~missionbound.client.mcp_auth.mission_mcp_client` wiring it up.

Like the enforcement points, this package uses :mod:`missionbound.protocol` and
:mod:`missionbound.mission` only, never the Authorization Server's code or store: an agent
runs on another machine. The agent SDK (issue 9: PAR, consent, token redemption and
refresh) will grow here.
"""
