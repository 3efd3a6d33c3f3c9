"""The policy compiler (PROFILE.md section 12, runtime-digest 2.2): deterministic, bound to
the Authority Set and never to state, validated by Cedar, loaded once, cached by version."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest

from missionbound.mission.anchors import anchor, authority_hash
from missionbound.mission.canonical import canonicalize
from missionbound.mission.lifecycle import State
from missionbound.runtime.compiler import (
    PolicyArtifact,
    PolicyCache,
    PolicyCompileError,
    check_cedar,
    compile_policy,
    load_policy,
)
from tests.runtime.table_support import (
    DEMO_AUTHORITY,
    ERP,
    ISSUER,
    MCP,
    demo_catalog,
    make_mission,
)


def test_the_same_mission_compiles_to_byte_identical_output() -> None:
    one = compile_policy(make_mission(), demo_catalog())
    two = compile_policy(make_mission(), demo_catalog())
    assert canonicalize(one.manifest) == canonicalize(two.manifest)
    assert json.dumps(one.to_json(), sort_keys=True) == json.dumps(two.to_json(), sort_keys=True)
    assert one.policy_version.startswith("sha-256:")
    # The section 2.2 envelope: typ mission-policy-view, iss the Mission's origin.
    assert one.policy_version == anchor("mission-policy-view", ISSUER, one.manifest)


def test_state_version_and_timestamps_never_enter_the_artifact() -> None:
    record = make_mission()
    base = compile_policy(record, demo_catalog())
    later = replace(record, state=State.SUSPENDED, version=7,
                    activated_at=record.created_at, lifecycle_history=[{"x": 1}])
    assert compile_policy(later, demo_catalog()).policy_version == base.policy_version
    text = json.dumps(base.to_json())
    assert "active" not in text and "suspended" not in text


def test_the_version_follows_the_authority_set() -> None:
    base = compile_policy(make_mission(), demo_catalog())
    narrowed = list(copy.deepcopy(DEMO_AUTHORITY))
    narrowed[1]["constraints"]["max_value"]["amount"] = "400.00"
    assert compile_policy(make_mission(narrowed), demo_catalog()).policy_version != \
        base.policy_version
    reordered = [narrowed[1], narrowed[0], *narrowed[2:]]
    assert compile_policy(make_mission(reordered), demo_catalog()).policy_version not in (
        base.policy_version,)


def test_resource_policy_references_enter_only_for_named_resources() -> None:
    record = make_mission()
    base = compile_policy(record, demo_catalog())
    other = compile_policy(record, demo_catalog(),
                           resource_policies={"https://elsewhere.example": "t"})
    guarded = compile_policy(record, demo_catalog(), resource_policies={ERP: "holds"})
    assert other.policy_version == base.policy_version
    assert guarded.policy_version != base.policy_version
    assert guarded.manifest["policy_ir"]["resource_policies"] == {ERP: "holds"}


def test_the_cedar_text_has_one_permit_per_entry_and_validates() -> None:
    artifact = compile_policy(make_mission(), demo_catalog())
    assert artifact.policies.count("permit(") == len(DEMO_AUTHORITY)
    check_cedar(artifact.policies, artifact.schema)
    policy = load_policy(artifact)
    assert [e.index for e in policy.granting_entries(ERP, "invoices.read")] == [0]
    assert policy.granting_entries(MCP, "invoices.read") == []
    assert policy.granting_entries(ERP, "nope") == []


def test_a_validation_failure_is_an_error() -> None:
    artifact = compile_policy(make_mission(), demo_catalog())
    with pytest.raises(PolicyCompileError, match="do not validate"):
        check_cedar(artifact.policies.replace('Action::"invoices.read"', 'Action::"zz"'),
                    artifact.schema)
    with pytest.raises(PolicyCompileError):
        check_cedar("permit(", artifact.schema)


def test_a_tampered_artifact_does_not_load() -> None:
    artifact = compile_policy(make_mission(), demo_catalog())
    stored = artifact.to_json()
    assert PolicyArtifact.from_json(json.loads(json.dumps(stored))) == artifact
    widened = dict(stored, policies=stored["policies"].replace(
        "resource == Audience", "resource is Audience || resource == Audience"))
    with pytest.raises(PolicyCompileError, match="sources"):
        PolicyArtifact.from_json(widened)
    manifest = copy.deepcopy(stored["manifest"])
    manifest["policy_ir"]["entries"][1]["constraints"]["max_value"]["amount"] = "9999.00"
    with pytest.raises(PolicyCompileError, match="policy_version"):
        PolicyArtifact.from_json(dict(stored, manifest=manifest))
    with pytest.raises(PolicyCompileError):
        PolicyArtifact.from_json(dict(stored, entities="x"))


def test_an_unapproved_or_inconsistent_mission_does_not_compile() -> None:
    record = make_mission()
    with pytest.raises(PolicyCompileError, match="not approved"):
        compile_policy(replace(record, authority_hash=None), demo_catalog())
    with pytest.raises(PolicyCompileError, match="authority_hash"):
        compile_policy(replace(record, authority_hash=authority_hash(ISSUER, [])),
                       demo_catalog())
    broken = [{"type": "mission_resource_access", "resource": ERP, "actions": ["bad name"]}]
    with pytest.raises(PolicyCompileError, match="actions"):
        compile_policy(make_mission(broken), demo_catalog())


def test_strings_are_escaped_in_cedar() -> None:
    odd = ERP + '/x"y\\z'
    entries = [{"type": "mission_resource_access", "resource": odd, "actions": ["a.b"]}]
    policy = load_policy(compile_policy(make_mission(entries), demo_catalog()))
    assert [e.index for e in policy.granting_entries(odd, "a.b")] == [0]
    assert policy.granting_entries(ERP + '/x"y', "a.b") == []


def test_the_cache_is_bounded_and_keyed_by_version() -> None:
    cache = PolicyCache(max_entries=2)
    artifacts = [compile_policy(make_mission(mission_id=f"msn_cache{i}" + "A" * 30),
                                demo_catalog()) for i in range(3)]
    loads: list[str] = []

    def loader(artifact: PolicyArtifact):  # type: ignore[no-untyped-def]
        def load():  # type: ignore[no-untyped-def]
            loads.append(artifact.mission_id)
            return load_policy(artifact)
        return load

    first = cache.get(artifacts[0].mission_id, artifacts[0].policy_version, loader(artifacts[0]))
    assert cache.get(artifacts[0].mission_id, artifacts[0].policy_version,
                     loader(artifacts[0])) is first
    for artifact in artifacts[1:]:
        cache.get(artifact.mission_id, artifact.policy_version, loader(artifact))
    assert len(cache) == 2 and len(loads) == 3
    cache.get(artifacts[0].mission_id, artifacts[0].policy_version, loader(artifacts[0]))
    assert len(loads) == 4  # evicted as least recently used, loaded again
    with pytest.raises(PolicyCompileError):
        cache.get(artifacts[1].mission_id, "sha-256:other", loader(artifacts[1]))
    cache.discard(artifacts[0].mission_id)
    assert len(cache) == 1


def test_the_catalogs_class_floors_apply_by_default() -> None:
    """A resource's configured ``class_floors`` enter the artifact without being passed:
    the approval path compiles with the catalog alone."""
    catalog = demo_catalog()
    resources = dict(catalog.resources)
    resources[ERP] = replace(resources[ERP], class_floors={"invoices.*": "irreversible"})
    floored = replace(catalog, resources=resources)
    base = compile_policy(make_mission(), catalog)
    raised = compile_policy(make_mission(), floored)
    facts = raised.manifest["policy_ir"]["entries"][0]["action_facts"]["invoices.read"]
    assert (facts["class"], facts["class_source"]) == ("irreversible", "resource_floor")
    assert raised.policy_version != base.policy_version
