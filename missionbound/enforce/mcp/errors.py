"""How the gateway refuses a JSON-RPC request (PROFILE.md section 13).

Authentication failures never get this far: they are HTTP 401/403 with ``WWW-Authenticate``
from the Resource Server kit, before any JSON-RPC is read. Past authentication:

- :class:`ToolRefused`: JSON-RPC error ``-32001`` (in the implementation-defined server error
  range of JSON-RPC 2.0 section 5.1), a message for a person and ``data = {"reason",
  "evaluation_id"}``: the PDP's deny reason (or the gateway's own, such as
  ``pdp_unreachable`` or a permit refusal) and the id of the Decision Evidence the refusal
  left (``null`` when no decision was made). Never the policy, the constraint or its value:
  the PDP keeps those in its evidence (denial-oracle minimisation, runtime-digest 1.6).
- :class:`InvalidToolArguments`: JSON-RPC ``-32602`` (invalid params): the arguments do not
  fit the tool's ``inputSchema`` or declare members it does not have. Nothing is decided.
- :class:`UpstreamFailed`: JSON-RPC ``-32603``: the tool server failed or could not be
  reached; reported to the PDP as ``failed`` when a permit was used.
"""

from __future__ import annotations

from typing import Final

from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS

TOOL_REFUSED: Final = -32001


class ToolRefused(MCPError):
    """The call is refused by policy or by the gateway's permit check: ``-32001``.
    ``decision`` (for the metrics, never on the wire) says who refused: ``deny`` the PDP,
    ``refused`` the gateway itself."""

    def __init__(self, reason: str, message: str, *, evaluation_id: str | None,
                 decision: str = "refused") -> None:
        super().__init__(TOOL_REFUSED, message,
                         {"reason": reason, "evaluation_id": evaluation_id})
        self.reason = reason
        self.evaluation_id = evaluation_id
        self.decision = decision


class InvalidToolArguments(MCPError):
    """The arguments are not ones the tool declares: ``-32602``."""

    def __init__(self, message: str) -> None:
        super().__init__(INVALID_PARAMS, message)


class UpstreamFailed(MCPError):
    """The tool server failed or could not be reached: ``-32603``."""

    def __init__(self, message: str = "the tool server could not complete the call") -> None:
        super().__init__(INTERNAL_ERROR, message)


__all__ = ["TOOL_REFUSED", "InvalidToolArguments", "ToolRefused", "UpstreamFailed"]
