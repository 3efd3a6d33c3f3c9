"""Tool-manifest binding (capability-source binding): the digest of one tool's definition,
the stable capability id, and the ``context.capability_source`` member of an AuthZEN request
(runtime-digest sections 4.2 and 5.8; PROFILE.md sections 13 and 14).

At approval the Authorization Server reads each granted tool's definition from the tool
server's ``tools/list`` and records its digest (``source_digest``) in the Mission's compiled
policy. At every call the PEP digests the definition it sees *now* and presents it; the PDP
refuses with ``capability_drift`` when the two differ. The digest covers exactly one tool
(the per-capability "MCP extraction" of section 5.8), so adding or changing another tool on
the same server never drifts this one.

Pure: no MCP import. Readers of real servers live in ``missionbound.enforce.mcp.definitions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from missionbound.mission.canonical import canonicalize, digest_bytes
from missionbound.mission.errors import InvalidRequest

CAPABILITY_SOURCE_MEMBERS: Final = ("tool_id", "source_uri", "source_digest", "operation_ref")


class ToolDefinitionError(ValueError):
    """A tool definition that cannot be digested (not a JSON object, a lone surrogate, an
    integer outside I-JSON, a non-finite number)."""


class ToolDefinitionsUnavailable(Exception):
    """A :class:`ToolDefinitionSource` that should know a resource's tools cannot read them
    now (the upstream is down, slow, or answers something that is not a tool list). Approval
    fails closed on it: a binding recorded from a guess would refuse or admit the wrong tool."""


def tool_definition_digest(definition: Mapping[str, Any]) -> str:
    """``"sha-256:" + b64url_nopad(SHA-256(JCS(definition)))`` of ONE tool's definition
    object exactly as ``tools/list`` shows it (members by their wire names, absent members
    omitted; runtime-digest 5.8). Floats are digested as JCS writes them: a JSON Schema may
    carry ``"minimum": 0.5``, and what is hashed is the published text, not an amount."""
    if not isinstance(definition, Mapping):
        raise ToolDefinitionError("a tool definition must be a JSON object")
    try:
        return digest_bytes(canonicalize(dict(definition)))
    except InvalidRequest as exc:
        raise ToolDefinitionError(f"tool definition: {exc.description}") from None


def tool_id(resource: str, tool_name: str) -> str:
    """The stable id of tool ``tool_name`` at ``resource`` (the Mission resource whose action
    it is: an MCP server's resource URI, or a local tool runner's audience):
    ``<resource>#<tool name>`` (PROFILE.md section 4: for MCP resources the action name is
    the tool name). Permits, evidence and capability bindings all name tools this way."""
    return f"{resource}#{tool_name}"


def operation_ref(tool_name: str) -> str:
    """``operation_ref`` of an MCP tool (runtime-digest 5.8: the MCP tool name)."""
    return f"tools/{tool_name}"


@dataclass(frozen=True, slots=True)
class CapabilitySource:
    """``context.capability_source`` of an evaluation request: which capability the PEP is
    about to invoke and the digest of its definition as the PEP sees it now."""

    tool_id: str
    source_digest: str | None = None
    source_uri: str | None = None
    operation_ref: str | None = None

    @classmethod
    def for_tool(cls, resource: str, name: str, definition: Mapping[str, Any], *,
                 source_uri: str | None = None) -> CapabilitySource:
        """What a PEP presents for tool ``name`` of ``resource`` whose current definition
        is ``definition``."""
        return cls(tool_id=tool_id(resource, name),
                   source_digest=tool_definition_digest(definition),
                   source_uri=source_uri, operation_ref=operation_ref(name))

    def to_json(self) -> dict[str, str]:
        """The wire object; absent members are omitted, never null."""
        values = {"tool_id": self.tool_id, "source_uri": self.source_uri,
                  "source_digest": self.source_digest, "operation_ref": self.operation_ref}
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_json(cls, value: Any) -> CapabilitySource:
        """Read the wire object: ``tool_id`` a non-empty string, the others absent or
        non-empty strings; unknown members (``executor``, ``catalog_digest``) ignored.
        Raises :class:`ValueError`. (The PDP reads it with its own length bounds in
        ``runtime/request.py``.)"""
        if not isinstance(value, Mapping):
            raise ValueError("capability_source must be a JSON object")
        read: dict[str, str | None] = {}
        for name in CAPABILITY_SOURCE_MEMBERS:
            member = value.get(name)
            if name not in value and name != "tool_id":
                read[name] = None
            elif not isinstance(member, str) or not member:
                raise ValueError(f"capability_source.{name} must be a non-empty string")
            else:
                read[name] = member
        tool = read.pop("tool_id")
        assert tool is not None
        return cls(tool_id=tool, **read)


class ToolDefinitionSource(Protocol):
    """Where the Authorization Server reads tool definitions at approval."""

    def definitions(self, resource: str) -> Mapping[str, Mapping[str, Any]] | None:
        """Tool name -> definition object as ``tools/list`` shows it, for the tool server
        at ``resource``; None when this source does not know ``resource`` (its Missions are
        then not bound). Raises :class:`ToolDefinitionsUnavailable` when it knows the
        resource but cannot read its tools now."""
        ...
