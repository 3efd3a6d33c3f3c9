"""Approving a Mission together with its compiled policy (PROFILE.md section 12, "Policy
artifact"): at approval the Authority Set, the catalog and the resource-policy references
compile to the artifact whose digest becomes the Mission's ``policy_version``, and the
artifact is stored with the Mission in the approval's transaction. Every approval path (the
consent page, tests, tools) goes through :func:`approve_with_policy`, so no active Mission
lacks the artifact its ``policy_version`` names.

Tool-manifest binding (runtime-digest 5.8): :func:`read_tool_definitions` reads, from the
deployment's :class:`~missionbound.protocol.tool_manifest.ToolDefinitionSource`, the tools of
every resource the Authority Set grants that the source knows. The caller reads them before it
writes anything (a network read must not hold the approval's write lock) and hands them to
:func:`approve_with_policy`, which compiles them into the artifact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from missionbound.mission.anchors import Anchors
from missionbound.mission.authority import ENTRY_TYPE
from missionbound.mission.catalog import Catalog
from missionbound.mission.lifecycle import DEFAULT_POLICY, LifecyclePolicy
from missionbound.mission.record import MissionRecord, Principal
from missionbound.protocol.tool_manifest import (
    ToolDefinitionSource,
    ToolDefinitionsUnavailable,
)
from missionbound.runtime.compiler import PolicyArtifact, compile_policy
from missionbound.store import missions
from missionbound.store.lifecycle import TransitionResult
from missionbound.store.runtime import save_policy_artifact

ToolDefinitions = Mapping[str, Mapping[str, Mapping[str, Any]]]
"""resource -> tool name -> definition object, as ``tools/list`` showed it at approval."""


def read_tool_definitions(source: ToolDefinitionSource | None,
                          authority_set: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """The definitions of the tools of every ``mission_resource_access`` resource in
    ``authority_set`` that ``source`` knows (none without a source). Raises
    :class:`~missionbound.protocol.tool_manifest.ToolDefinitionsUnavailable` when a known
    resource cannot be read now, or answers something that is not a tool list: approval
    must then fail closed."""
    if source is None:
        return {}
    resources = sorted({entry["resource"] for entry in authority_set
                        if isinstance(entry, dict) and entry.get("type") == ENTRY_TYPE
                        and isinstance(entry.get("resource"), str)})
    read: dict[str, dict[str, Any]] = {}
    for resource in resources:
        tools = source.definitions(resource)
        if tools is None:
            continue
        if not isinstance(tools, Mapping) or not all(
                isinstance(name, str) and isinstance(definition, Mapping)
                for name, definition in tools.items()):
            raise ToolDefinitionsUnavailable(f"the tool definitions of {resource} are not "
                                             "a map of tool names to objects")
        read[resource] = {name: dict(definition) for name, definition in tools.items()}
    return read


def approve_with_policy(
    session: Session,
    pending: MissionRecord,
    catalog: Catalog,
    *,
    approver: Principal,
    approval_event_id: str,
    anchors: Anchors,
    consent_disclosure: dict[str, Any],
    now: datetime,
    subject: Principal | None = None,
    resource_policies: Mapping[str, str] | None = None,
    lifecycle_policy: LifecyclePolicy = DEFAULT_POLICY,
    tool_definitions: ToolDefinitions | None = None,
) -> tuple[TransitionResult, PolicyArtifact]:
    """Compile ``pending`` as it will be approved (with ``anchors.authority_hash``), then
    :func:`missions.approve` it with the artifact's digest as ``policy_version`` and store
    the artifact, all in the caller's transaction. A Mission that does not compile raises
    :class:`~missionbound.runtime.compiler.PolicyCompileError` before anything is written
    (fail closed: no active Mission without its artifact). ``tool_definitions``
    (:func:`read_tool_definitions`) binds each granted tool of those resources to the digest
    of its definition."""
    artifact = compile_policy(replace(pending, authority_hash=anchors.authority_hash), catalog,
                              resource_policies=resource_policies or {},
                              tool_definitions=tool_definitions)
    result = missions.approve(
        session, pending.mission_id, approver=approver, subject=subject,
        approval_event_id=approval_event_id, anchors=anchors,
        consent_disclosure=consent_disclosure, authority_set=pending.authority_set,
        policy_version=artifact.policy_version, now=now, policy=lifecycle_policy)
    # After approve, which holds the Mission row the artifact's foreign key names.
    save_policy_artifact(session, mission_id=pending.mission_id,
                         policy_version=artifact.policy_version, artifact=artifact.to_json(),
                         now=now)
    return result, artifact
