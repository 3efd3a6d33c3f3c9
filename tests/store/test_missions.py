"""The Mission repository: create at PAR, read, list, approve (PROFILE.md sections 5, 7)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from missionbound.mission.anchors import (
    authority_hash,
    compute_anchors,
    find_anchor_mismatch,
    proposal_hash,
)
from missionbound.mission.canonical import digest_json
from missionbound.mission.catalog import load_catalog
from missionbound.mission.consent import Party, build_consent_disclosure
from missionbound.mission.derivation import ClientCeiling, derive_authority
from missionbound.mission.errors import ConcurrentModification, InvalidRequest
from missionbound.mission.intent import validate_intent
from missionbound.mission.lifecycle import Event, State
from missionbound.mission.record import MissionRecord, Principal
from missionbound.store import missions
from missionbound.store.errors import MissionRecordTampered
from missionbound.store.models import AuditRecord, Mission, MissionHistory, OutboxEvent
from missionbound.store.outbox import LIFECYCLE_TOPIC
from missionbound.store.transactions import Store
from tests.store.factories import (
    ALICE,
    BOB,
    ISSUER,
    T0,
    Traces,
    count_traces,
    make_approval,
    make_record,
)

CLIENT_ACTOR = {"role": "client", "client_id": "demo-agent"}
CreateMission = Callable[..., MissionRecord]


def test_create_pending_stores_the_record_with_its_three_traces(store: Store) -> None:
    record = make_record(max_derivations=5)
    with store.begin() as session:
        created = missions.create_pending(session, record, CLIENT_ACTOR, T0)
    assert created.state is State.PENDING_APPROVAL
    assert created.version == 1
    with store.read() as session:
        stored = missions.get(session, record.mission_id)
        assert count_traces(session, record.mission_id) == Traces(1, 1, 1)
        audit = session.scalars(select(AuditRecord)).one()
        event = session.scalars(select(OutboxEvent)).one()
        assert missions.derivation_count(session, record.mission_id) == 0
    assert stored is not None
    assert stored == dataclasses.replace(record, lifecycle_history=stored.lifecycle_history)
    assert stored.max_derivations == 5
    assert stored.lifecycle_history == [
        {
            "version": 1,
            "event": "submit",
            "from_state": None,
            "to_state": "pending_approval",
            "actor": CLIENT_ACTOR,
            "reason": None,
            "committed_at": "2026-10-15T14:32:11Z",
        }
    ]
    assert (audit.event, audit.mission_id, audit.mission_seq) == (
        "mission.created",
        record.mission_id,
        1,
    )
    assert audit.actor == CLIENT_ACTOR
    assert audit.policy_version == "deploy-policy:v1"
    assert event.topic == LIFECYCLE_TOPIC
    assert event.payload == {
        "mission": {"id": record.mission_id, "origin": ISSUER},
        "state": "pending_approval",
        "prior_state": None,
        "version": 1,
        "committed_at": "2026-10-15T14:32:11Z",
        "reason": None,
    }


@pytest.mark.parametrize(
    "bad",
    [
        lambda r: dataclasses.replace(r, state=State.ACTIVE),
        lambda r: dataclasses.replace(r, version=2),
        lambda r: dataclasses.replace(r, mission_id="msn_short"),
        lambda r: dataclasses.replace(r, approval_event_id="ape_x"),
        lambda r: dataclasses.replace(r, proposal_hash="sha-256:x"),
        lambda r: dataclasses.replace(r, mission_expiry=r.created_at),
        lambda r: dataclasses.replace(r, created_at=r.created_at.replace(tzinfo=None)),
    ],
    ids=["active", "version-2", "bad-id", "approved", "anchored", "expiry-not-after", "naive"],
)
def test_create_pending_refuses_a_record_that_is_not_new(
    store: Store, bad: Callable[[MissionRecord], MissionRecord]
) -> None:
    record = bad(make_record())
    with pytest.raises(InvalidRequest), store.begin() as session:
        missions.create_pending(session, record, CLIENT_ACTOR, T0)
    with store.read() as session:
        assert session.scalars(select(AuditRecord)).all() == []
        assert session.scalars(select(MissionHistory)).all() == []


def test_create_pending_refuses_an_existing_id_and_writes_nothing(
    store: Store, create_mission: CreateMission
) -> None:
    first = create_mission()
    with pytest.raises(InvalidRequest, match="already exists"), store.begin() as session:
        missions.create_pending(session, make_record(mission_id=first.mission_id), CLIENT_ACTOR, T0)
    with store.read() as session:
        assert count_traces(session, first.mission_id) == Traces(1, 1, 1)


def test_get_of_an_unknown_id_is_none_and_a_malformed_id_is_refused(store: Store) -> None:
    with store.read() as session:
        assert missions.get(session, "msn_" + "A" * 32) is None
        with pytest.raises(InvalidRequest):
            missions.get(session, "../etc/passwd")


def test_list_missions_filters_by_state_subject_and_client(
    store: Store, create_mission: CreateMission, active_mission: CreateMission
) -> None:
    alice_pending = create_mission(created_at=T0)
    alice_active = active_mission(created_at=T0 + timedelta(seconds=1))
    bob_other_client = create_mission(
        created_at=T0 + timedelta(seconds=2), subject=BOB, client_id="other-agent"
    )
    with store.read() as session:

        def ids(**filters: Any) -> list[str]:
            return [m.mission_id for m in missions.list_missions(session, **filters)]

        assert ids() == [
            bob_other_client.mission_id,
            alice_active.mission_id,
            alice_pending.mission_id,
        ]
        assert ids(state="active") == [alice_active.mission_id]
        assert ids(state=State.PENDING_APPROVAL, subject="alice") == [alice_pending.mission_id]
        assert ids(client_id="other-agent") == [bob_other_client.mission_id]
        assert ids(subject="carol") == []
        assert ids(limit=1) == [bob_other_client.mission_id]
        listed = missions.list_missions(session, state="active")[0]
        assert [entry["event"] for entry in listed.lifecycle_history] == ["submit", "approve"]
        with pytest.raises(InvalidRequest):
            missions.list_missions(session, state="dormant")
        with pytest.raises(InvalidRequest):
            missions.list_missions(session, limit=0)


def test_approve_fills_the_approval_members_and_activates(
    store: Store, create_mission: CreateMission
) -> None:
    record = create_mission()
    approval = make_approval(record)
    approved_at = T0 + timedelta(minutes=2)
    with store.begin() as session:
        result = missions.approve(session, record.mission_id, now=approved_at, **approval.kwargs())
    assert result.decision.changed
    assert (result.decision.from_state, result.decision.to_state) == (
        State.PENDING_APPROVAL,
        State.ACTIVE,
    )
    with store.read() as session:
        stored = missions.get(session, record.mission_id)
        traces = count_traces(session, record.mission_id)
        audit = session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
        stored_record = session.get(Mission, record.mission_id).record  # type: ignore[union-attr]
        event = session.scalars(select(OutboxEvent).order_by(OutboxEvent.id.desc())).first()
    assert stored is not None and audit is not None and event is not None
    assert result.record == stored
    assert (stored.state, stored.version) == (State.ACTIVE, 2)
    assert stored.approver == BOB and stored.subject == ALICE
    assert stored.approval_event_id == approval.approval_event_id
    assert stored.activated_at == approved_at
    assert stored.consent_disclosure == approval.consent_disclosure
    assert stored.authority_set == approval.authority_set
    assert (stored.proposal_hash, stored.consent_rendering_hash, stored.authority_hash) == (
        approval.anchors.proposal_hash,
        approval.anchors.consent_rendering_hash,
        approval.anchors.authority_hash,
    )
    assert find_anchor_mismatch(stored.as_dict()) is None
    assert traces == Traces(2, 2, 2)
    assert audit.event == "mission.transition"
    assert audit.actor == {"role": "approver", "iss": ISSUER, "sub": "bob"}
    assert audit.authority_hash == approval.anchors.authority_hash
    assert audit.data == {
        "event": "approve",
        "prior_state": "pending_approval",
        "state": "active",
        "version": 2,
        "reason": None,
        "record_digest": digest_json(stored_record),
    }
    assert (event.payload["state"], event.payload["prior_state"], event.payload["version"]) == (
        "active",
        "pending_approval",
        2,
    )


def test_approve_replayed_with_the_same_event_writes_nothing(
    store: Store, create_mission: CreateMission
) -> None:
    record = create_mission()
    approval = make_approval(record)
    for _ in range(2):
        with store.begin() as session:
            result = missions.approve(
                session, record.mission_id, now=T0 + timedelta(minutes=1), **approval.kwargs()
            )
    assert not result.decision.changed
    assert (result.record.state, result.record.version) == (State.ACTIVE, 2)
    with store.read() as session:
        assert count_traces(session, record.mission_id) == Traces(2, 2, 2)


def test_a_second_different_approval_is_refused_and_changes_nothing(
    store: Store, create_mission: CreateMission
) -> None:
    record = create_mission()
    with store.begin() as session:
        missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **make_approval(record).kwargs(),
        )
    other = make_approval(record)
    other = dataclasses.replace(other, policy_version="deploy-policy:v2")
    with pytest.raises(ConcurrentModification), store.begin() as session:
        missions.approve(
            session, record.mission_id, now=T0 + timedelta(minutes=2), **other.kwargs()
        )
    with store.read() as session:
        stored = missions.get(session, record.mission_id)
        assert stored is not None and stored.policy_version == "deploy-policy:v1"
        assert count_traces(session, record.mission_id) == Traces(2, 2, 2)


def test_an_approval_event_cannot_approve_two_missions(
    store: Store, create_mission: CreateMission
) -> None:
    first, second = create_mission(), create_mission()
    approval = make_approval(first)
    with store.begin() as session:
        missions.approve(
            session, first.mission_id, now=T0 + timedelta(minutes=1), **approval.kwargs()
        )
    reused = dataclasses.replace(
        make_approval(second), approval_event_id=approval.approval_event_id
    )
    with pytest.raises(InvalidRequest, match="another Mission"), store.begin() as session:
        missions.approve(
            session, second.mission_id, now=T0 + timedelta(minutes=1), **reused.kwargs()
        )
    with store.read() as session:
        stored = missions.get(session, second.mission_id)
        assert stored is not None and stored.state is State.PENDING_APPROVAL


@pytest.mark.parametrize("anchor", ["proposal_hash", "consent_rendering_hash", "authority_hash"])
def test_anchors_that_do_not_commit_to_the_members_are_refused(
    store: Store, create_mission: CreateMission, anchor: str
) -> None:
    record = create_mission()
    approval = make_approval(record)
    forged = dataclasses.replace(approval.anchors, **{anchor: "sha-256:" + "A" * 43})
    with pytest.raises(InvalidRequest, match=anchor), store.begin() as session:
        missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **{**approval.kwargs(), "anchors": forged},
        )
    with store.read() as session:
        stored = missions.get(session, record.mission_id)
        assert stored is not None and stored.state is State.PENDING_APPROVAL
        assert stored.authority_hash is None
        assert count_traces(session, record.mission_id) == Traces(1, 1, 1)


def test_approval_after_the_consent_window_is_refused_and_the_expiry_is_kept(
    store: Store, create_mission: CreateMission
) -> None:
    record = create_mission()
    too_late = T0 + timedelta(minutes=11)  # the default consent window is 10 minutes
    with pytest.raises(ConcurrentModification), store.begin() as session:
        missions.approve(session, record.mission_id, now=too_late, **make_approval(record).kwargs())
    with store.read() as session:
        stored = missions.get(session, record.mission_id)
        assert count_traces(session, record.mission_id) == Traces(2, 2, 2)
    assert stored is not None
    assert (stored.state, stored.version) == (State.EXPIRED, 2)
    assert stored.approval_event_id is None
    assert stored.lifecycle_history[-1]["event"] == Event.EXPIRE.value
    assert stored.lifecycle_history[-1]["reason"] == "consent window lapsed without approval"


def _narrowed(authority: list[Any]) -> list[Any]:
    return [dict(authority[0], actions=["invoices.read"])]


def _widened(authority: list[Any]) -> list[Any]:
    return [dict(authority[0], actions=[*authority[0]["actions"], "payments.execute"])]


def _emptied(authority: list[Any]) -> list[Any]:
    return []


def _retyped(authority: list[Any]) -> list[Any]:
    # The derived entry says max_calls 1; True == 1 in Python but not in JSON.
    return [dict(authority[0], constraints={"max_calls": True})]


@pytest.mark.parametrize("change", [_narrowed, _widened, _emptied, _retyped])
def test_approve_refuses_an_authority_set_other_than_the_derived_one(
    store: Store, change: Callable[[list[Any]], list[Any]]
) -> None:
    derived = [dict(make_record().authority_set[0], constraints={"max_calls": 1})]
    record = dataclasses.replace(make_record(), authority_set=derived)
    with store.begin() as session:
        missions.create_pending(session, record, CLIENT_ACTOR, T0)
    approval = make_approval(record)
    granted = change(derived)
    # Anchors consistent with what is passed: only the equality with PAR can refuse it.
    anchors = compute_anchors(
        record.origin,
        mission_intent=record.mission_intent,
        authorization_details_requested=record.authorization_details_requested,
        consent_disclosure=approval.consent_disclosure,
        authority_set=granted,
    )
    with pytest.raises(InvalidRequest, match="derived at PAR"), store.begin() as session:
        missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **{**approval.kwargs(), "authority_set": granted, "anchors": anchors},
        )
    with store.read() as session:
        after = missions.get(session, record.mission_id)
        assert count_traces(session, record.mission_id) == Traces(1, 1, 1)
    assert after is not None and after.state is State.PENDING_APPROVAL
    assert after.authority_set == derived and after.authority_hash is None


def test_approve_accepts_the_derived_set_whatever_its_key_order(
    store: Store, create_mission: CreateMission
) -> None:
    record = create_mission()
    approval = make_approval(record)
    reordered = [dict(reversed(list(entry.items()))) for entry in record.authority_set]
    with store.begin() as session:
        result = missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **{**approval.kwargs(), "authority_set": reordered},
        )
    assert result.record.state is State.ACTIVE
    assert result.record.authority_hash == approval.anchors.authority_hash


# -- the consent disclosure must be the one rendered for this approval -----------------------


def _demo_mission() -> tuple[MissionRecord, Any]:
    """A pending Mission derived from the demo tenant's catalog, and that catalog."""
    raw = tomllib.loads((Path(missions.__file__).parents[1] / "demo" / "tenant.toml").read_text())
    catalog = load_catalog(json.loads(json.dumps(raw["catalog"]).replace("{issuer}", ISSUER)))
    intent = validate_intent(
        json.dumps(
            {
                "goal": "Reconcile the Q3 invoices.",
                "resources": [f"{ISSUER}/demo/erp"],
                "mission_expiry": "2026-10-17T17:00:00Z",
                "context": {"max_value": {"amount": "500.00", "currency": "USD"}},
            }
        ),
        catalog=catalog,
        now=T0,
    )
    derivation = derive_authority(
        intent,
        catalog=catalog,
        client=ClientCeiling("demo-agent", {f"{ISSUER}/demo/erp": None}),
        now=T0,
        max_lifetime=timedelta(days=30),
    )
    record = dataclasses.replace(
        make_record(),
        mission_intent=intent.value,
        authorization_details_requested=list(derivation.authorization_details_requested),
        authority_set=list(derivation.authority_set),
        narrowing_decisions=list(derivation.narrowing_decisions),
        policy_version=derivation.policy_version,
        mission_expiry=derivation.mission_expiry,
    )
    return record, (intent, derivation, catalog)


def test_approve_accepts_a_disclosure_built_by_the_core(store: Store) -> None:
    record, (intent, derivation, catalog) = _demo_mission()
    with store.begin() as session:
        missions.create_pending(session, record, CLIENT_ACTOR, T0)
    disclosure = build_consent_disclosure(
        disclosure_id="cd_1",
        intent=intent,
        authority_set=derivation.authority_set,
        narrowing_decisions=derivation.narrowing_decisions,
        mission_expiry=derivation.mission_expiry,
        subject=Party(ALICE, "Alice"),
        approver=Party(BOB, "Bob"),
        client_id="demo-agent",
        client_name="Demo agent",
        catalog=catalog,
        proposal_hash=proposal_hash(
            ISSUER, record.mission_intent, record.authorization_details_requested
        ),
        authority_hash=authority_hash(ISSUER, record.authority_set),
        rendered_at=T0,
    )
    approval = make_approval(record)
    anchors = compute_anchors(
        ISSUER,
        mission_intent=record.mission_intent,
        authorization_details_requested=record.authorization_details_requested,
        consent_disclosure=disclosure,
        authority_set=record.authority_set,
    )
    with store.begin() as session:
        result = missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **{**approval.kwargs(), "consent_disclosure": disclosure, "anchors": anchors},
        )
    assert result.record.state is State.ACTIVE
    assert result.record.consent_disclosure == disclosure


def _without(disclosure: dict[str, Any], member: str) -> dict[str, Any]:
    return {name: value for name, value in disclosure.items() if name != member}


def _other_hash(disclosure: dict[str, Any], name: str) -> dict[str, Any]:
    return {**disclosure, "source_hashes": {**disclosure["source_hashes"], name: "sha-256:x"}}


DISCLOSURE_CHANGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "empty": lambda d: {},
    "no-source-hashes": lambda d: _without(d, "source_hashes"),
    "other-proposal": lambda d: _other_hash(d, "proposal_hash"),
    "other-authority": lambda d: _other_hash(d, "authority_hash"),
    "extra-source-hash": lambda d: {
        **d,
        "source_hashes": {**d["source_hashes"], "consent_rendering_hash": "sha-256:x"},
    },
    "source-hashes-not-object": lambda d: {**d, "source_hashes": "sha-256:x"},
    "no-approver": lambda d: _without(d, "approver"),
    "other-approver": lambda d: {**d, "approver": {**ALICE.as_dict(), "display_name": "A"}},
    "approver-of-another-issuer": lambda d: {
        **d,
        "approver": {**d["approver"], "iss": "https://elsewhere.example"},
    },
    "no-subject": lambda d: _without(d, "subject"),
    "other-subject": lambda d: {**d, "subject": BOB.as_dict()},
    "subject-not-object": lambda d: {**d, "subject": "alice"},
}


@pytest.mark.parametrize("change", DISCLOSURE_CHANGES.values(), ids=DISCLOSURE_CHANGES.keys())
def test_approve_refuses_a_disclosure_of_another_approval_and_writes_nothing(
    store: Store, create_mission: CreateMission, change: Callable[[dict[str, Any]], Any]
) -> None:
    record = create_mission()
    approval = make_approval(record)
    disclosure = change(approval.consent_disclosure)
    # Anchors consistent with the disclosure passed: only the disclosure check can refuse.
    anchors = compute_anchors(
        record.origin,
        mission_intent=record.mission_intent,
        authorization_details_requested=record.authorization_details_requested,
        consent_disclosure=disclosure,
        authority_set=approval.authority_set,
    )
    with pytest.raises(InvalidRequest, match="consent_disclosure"), store.begin() as session:
        missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **{**approval.kwargs(), "consent_disclosure": disclosure, "anchors": anchors},
        )
    with store.read() as session:
        stored = missions.get(session, record.mission_id)
        assert count_traces(session, record.mission_id) == Traces(1, 1, 1)
    assert stored is not None and stored.state is State.PENDING_APPROVAL
    assert stored.consent_disclosure is None and stored.authority_hash is None


def test_approve_refuses_a_pending_record_rewritten_behind_the_as(
    store: Store, create_mission: CreateMission
) -> None:
    # The subject moved to mallory in the record and its column, and a disclosure rendered
    # from the rewritten record: approving would commit the rewrite to the log.
    record = create_mission()
    with store.begin() as session:
        row = session.get(Mission, record.mission_id)
        assert row is not None
        row.record = {**row.record, "subject": {"iss": ISSUER, "sub": "mallory"}}
        row.subject_sub = "mallory"
    mallory = dataclasses.replace(record, subject=Principal(iss=ISSUER, sub="mallory"))
    with pytest.raises(MissionRecordTampered, match="audit record 1"), store.begin() as session:
        missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **make_approval(mallory).kwargs(),
        )
    with store.read() as session:
        assert count_traces(session, record.mission_id) == Traces(1, 1, 1)
        stored = missions.get(session, record.mission_id)
    assert stored is not None and stored.state is State.PENDING_APPROVAL
