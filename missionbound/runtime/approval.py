"""Approving a Mission together with its compiled policy (PROFILE.md section 12, "Policy
artifact"): at approval the Authority Set, the catalog and the resource-policy references
compile to the artifact whose digest becomes the Mission's ``policy_version``, and the
artifact is stored with the Mission in the approval's transaction. Every approval path (the
consent page, tests, tools) goes through :func:`approve_with_policy`, so no active Mission
lacks the artifact its ``policy_version`` names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from missionbound.mission.anchors import Anchors
from missionbound.mission.catalog import Catalog
from missionbound.mission.lifecycle import DEFAULT_POLICY, LifecyclePolicy
from missionbound.mission.record import MissionRecord, Principal
from missionbound.runtime.compiler import PolicyArtifact, compile_policy
from missionbound.store import missions
from missionbound.store.lifecycle import TransitionResult
from missionbound.store.runtime import save_policy_artifact


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
) -> tuple[TransitionResult, PolicyArtifact]:
    """Compile ``pending`` as it will be approved (with ``anchors.authority_hash``), then
    :func:`missions.approve` it with the artifact's digest as ``policy_version`` and store
    the artifact, all in the caller's transaction. A Mission that does not compile raises
    :class:`~missionbound.runtime.compiler.PolicyCompileError` before anything is written
    (fail closed: no active Mission without its artifact)."""
    artifact = compile_policy(replace(pending, authority_hash=anchors.authority_hash), catalog,
                              resource_policies=resource_policies or {})
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
