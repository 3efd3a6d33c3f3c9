"""Compile at approval (PROFILE.md section 12, "Policy artifact"), over HTTP against the real
app on SQLite and PostgreSQL: the approved Mission's ``policy_version`` is the digest of the
artifact compiled from it, the artifact is stored with the Mission in the approval's
transaction, and Mission Status and introspection show that version."""

from __future__ import annotations

import dataclasses

from missionbound.runtime.approval import read_tool_definitions
from missionbound.runtime.compiler import PolicyArtifact, compile_policy
from missionbound.store.runtime import load_policy_artifact
from tests.issuer.flow import ERP, Flow, audit_verifies
from tests.issuer.governance_support import DEMO_RS, governance, nonce


def stored_artifact(flow: Flow, mission_id: str, policy_version: str) -> PolicyArtifact:
    with flow.store.read() as session, session.begin():
        stored = load_policy_artifact(session, mission_id, policy_version)
    assert stored is not None, "no artifact stored for the approved policy_version"
    return PolicyArtifact.from_json(stored)


def test_the_approved_policy_version_is_the_compiled_artifacts(flow: Flow) -> None:
    pushed = flow.push_ok()
    pending = flow.mission_of(pushed.request_uri)
    flow.approve(pushed.request_uri)
    approved = flow.mission(pending.mission_id)
    assert approved.policy_version != pending.policy_version
    assert approved.policy_version.startswith("sha-256:")
    artifact = stored_artifact(flow, approved.mission_id, approved.policy_version)
    assert artifact.policy_version == approved.policy_version
    assert artifact.manifest["authority_hash"] == approved.authority_hash
    # Recompiling what was approved (the record as it stood, with its anchors, and the tool
    # definitions approval bound) gives the same artifact: the stored version commits to the
    # Authority Set, the catalog and the granted tools' definitions.
    recompiled = compile_policy(
        dataclasses.replace(pending, authority_hash=approved.authority_hash),
        flow.issuer.tenant.catalog,
        resource_policies=flow.issuer.settings.pdp_resource_policies,
        tool_definitions=read_tool_definitions(flow.issuer.tool_definitions,
                                               pending.authority_set))
    assert recompiled == artifact
    audit_verifies(flow.engine)


def test_status_and_introspection_show_the_compiled_policy_version(flow: Flow) -> None:
    grant = flow.grant()
    mission = flow.mission(grant.mission_id)
    stored_artifact(flow, mission.mission_id, mission.policy_version)
    response = flow.client.post("/introspect", data={"token": grant.access_token},
                                auth=DEMO_RS)
    assert response.status_code == 200, response.text
    assert response.json()["mission"]["policy_version"] == mission.policy_version
    gov = governance(flow)
    _, claims = gov.verified(gov.status(mission.mission_id, ERP, nonce_value=nonce(),
                                        basic=DEMO_RS))
    assert claims["policy_version"] == mission.policy_version
