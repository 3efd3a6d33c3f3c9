"""The lifecycle through the store (PROFILE.md section 7): every legal transition with its
three traces, idempotent repeats without any, the 409s, clock-first expiry and the sweep."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from missionbound.mission.canonical import digest_json
from missionbound.mission.errors import (
    ConcurrentModification,
    InvalidRequest,
    InvalidState,
    TransitionForbidden,
)
from missionbound.mission.lifecycle import TRANSITIONS, Event, Role, State
from missionbound.mission.record import MissionRecord
from missionbound.store import missions
from missionbound.store.lifecycle import TransitionResult, expire_due, transition
from missionbound.store.models import AuditRecord, Mission, OutboxEvent
from missionbound.store.transactions import Store
from tests.store.factories import ISSUER, T0, Traces, count_traces, make_approval

CreateMission = Callable[..., MissionRecord]
ADMIN = {"role": "admin", "sub": "bob"}
LATER = T0 + timedelta(hours=1)
# Who may trigger each event (section 7, column "Who"), to drive every transition.
ROLE_FOR = {
    Event.REJECT: Role.APPROVER,
    Event.SUSPEND: Role.ADMIN,
    Event.RESUME: Role.ADMIN,
    Event.REVOKE: Role.SUBJECT,
    Event.COMPLETE: Role.CLIENT,
    Event.EXPIRE: Role.CLOCK,
}


def by_admin(session: Session, mission_id: str, event: Event, **overrides: Any) -> TransitionResult:
    """``transition`` as an administrator at ``LATER`` with no reason, unless overridden."""
    arguments: dict[str, Any] = {"roles": {Role.ADMIN}, "actor": ADMIN, "reason": None,
                                 "now": LATER, **overrides}
    return transition(session, mission_id, event, **arguments)


def _mission_in(state: State, store: Store, create_mission: CreateMission) -> MissionRecord:
    record = create_mission()
    if state is State.PENDING_APPROVAL:
        return record
    with store.begin() as session:
        result = missions.approve(
            session,
            record.mission_id,
            now=T0 + timedelta(minutes=1),
            **make_approval(record).kwargs(),
        )
    if state is State.SUSPENDED:
        with store.begin() as session:
            result = by_admin(session, record.mission_id, Event.SUSPEND, reason="setup",
                              now=T0 + timedelta(minutes=2))
    assert result.record.state is state
    return result.record


LEGAL = sorted(
    (
        (origin, event, target)
        for (origin, event), target in TRANSITIONS.items()
        if event is not Event.APPROVE
    ),
    key=lambda t: (t[0].value, t[1].value),
)


@pytest.mark.parametrize(
    ("origin", "event", "target"), LEGAL, ids=[f"{o.value}-{e.value}" for o, e, _ in LEGAL]
)
def test_every_legal_transition_commits_with_its_traces(
    store: Store, create_mission: CreateMission, origin: State, event: Event, target: State
) -> None:
    before = _mission_in(origin, store, create_mission)
    now = T0 + timedelta(minutes=5)
    with store.begin() as session:
        traces_before = count_traces(session, before.mission_id)
        result = transition(
            session,
            before.mission_id,
            event,
            roles={ROLE_FOR[event]},
            actor={"role": ROLE_FOR[event].value},
            reason="because",
            now=now,
        )
    assert result.decision.changed
    assert (result.record.state, result.record.version) == (target, before.version + 1)
    with store.read() as session:
        stored = missions.get(session, before.mission_id)
        traces = count_traces(session, before.mission_id)
        audit = session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
        stored_record = session.get(Mission, before.mission_id).record  # type: ignore[union-attr]
        outbox = session.scalars(select(OutboxEvent).order_by(OutboxEvent.id.desc())).first()
    assert stored is not None and audit is not None and outbox is not None
    assert (stored.state, stored.version) == (target, before.version + 1)
    assert traces == Traces(
        traces_before.history + 1, traces_before.audit + 1, traces_before.outbox + 1
    )
    assert stored.lifecycle_history[-1] == {
        "version": before.version + 1,
        "event": event.value,
        "from_state": origin.value,
        "to_state": target.value,
        "actor": {"role": ROLE_FOR[event].value},
        "reason": "because",
        "committed_at": "2026-10-15T14:37:11Z",
    }
    assert audit.data == {
        "event": event.value,
        "prior_state": origin.value,
        "state": target.value,
        "version": before.version + 1,
        "reason": "because",
        "record_digest": digest_json(stored_record),
    }
    assert outbox.payload == {
        "mission": {"id": before.mission_id, "origin": ISSUER},
        "state": target.value,
        "prior_state": origin.value,
        "version": before.version + 1,
        "committed_at": "2026-10-15T14:37:11Z",
        "reason": "because",
    }


@pytest.mark.parametrize(
    ("state", "event"),
    [(State.SUSPENDED, Event.SUSPEND), (State.ACTIVE, Event.RESUME)],
)
def test_a_repeat_aimed_at_the_current_state_writes_nothing(
    store: Store, create_mission: CreateMission, state: State, event: Event
) -> None:
    before = _mission_in(state, store, create_mission)
    with store.begin() as session:
        traces_before = count_traces(session, before.mission_id)
        result = transition(
            session,
            before.mission_id,
            event,
            roles={Role.ADMIN},
            actor=ADMIN,
            reason="again",
            now=LATER,
        )
    assert not result.decision.changed
    assert (result.record.state, result.record.version) == (state, before.version)
    with store.read() as session:
        assert count_traces(session, before.mission_id) == traces_before


def test_revoking_a_revoked_mission_is_an_idempotent_success(
    store: Store, create_mission: CreateMission
) -> None:
    mission = _mission_in(State.ACTIVE, store, create_mission)
    for _ in range(2):
        with store.begin() as session:
            result = by_admin(session, mission.mission_id, Event.REVOKE, reason="stop")
    assert not result.decision.changed and result.record.state is State.REVOKED
    with store.read() as session:
        assert count_traces(session, mission.mission_id) == Traces(3, 3, 3)


@pytest.mark.parametrize(
    ("state", "event", "role", "error"),
    [
        (State.ACTIVE, Event.SUSPEND, Role.SUBJECT, TransitionForbidden),
        (State.ACTIVE, Event.RESUME, Role.CLIENT, TransitionForbidden),
        (State.PENDING_APPROVAL, Event.SUSPEND, Role.ADMIN, InvalidState),
        (State.PENDING_APPROVAL, Event.REVOKE, Role.ADMIN, InvalidState),
        (State.REVOKED, Event.RESUME, Role.ADMIN, ConcurrentModification),
        (State.REVOKED, Event.COMPLETE, Role.ADMIN, ConcurrentModification),
        (State.COMPLETED, Event.SUSPEND, Role.ADMIN, ConcurrentModification),
    ],
)
def test_refused_events_raise_the_section_7_error_and_write_nothing(
    store: Store,
    create_mission: CreateMission,
    state: State,
    event: Event,
    role: Role,
    error: type[Exception],
) -> None:
    if state in (State.REVOKED, State.COMPLETED):
        mission = _mission_in(State.ACTIVE, store, create_mission)
        final = Event.REVOKE if state is State.REVOKED else Event.COMPLETE
        with store.begin() as session:
            transition(
                session,
                mission.mission_id,
                final,
                roles={Role.ADMIN},
                actor=ADMIN,
                reason=None,
                now=T0 + timedelta(minutes=5),
            )
    else:
        mission = _mission_in(state, store, create_mission)
    with store.read() as session:
        traces_before = count_traces(session, mission.mission_id)
    with pytest.raises(error) as raised, store.begin() as session:
        # Within the consent window, so the pending Mission is still pending.
        transition(
            session,
            mission.mission_id,
            event,
            roles={role},
            actor={"role": role.value},
            reason=None,
            now=T0 + timedelta(minutes=6),
        )
    assert raised.value.status in (403, 409)  # type: ignore[attr-defined]
    with store.read() as session:
        stored = missions.get(session, mission.mission_id)
        assert count_traces(session, mission.mission_id) == traces_before
    assert stored is not None and stored.state is state


def test_expected_version_guards_against_a_stale_view(
    store: Store, create_mission: CreateMission
) -> None:
    mission = _mission_in(State.ACTIVE, store, create_mission)  # version 2
    with (
        pytest.raises(ConcurrentModification, match="expected version 1"),
        store.begin() as session,
    ):
        by_admin(session, mission.mission_id, Event.SUSPEND, expected_version=1)
    with store.begin() as session:
        result = by_admin(session, mission.mission_id, Event.SUSPEND, expected_version=2)
    assert (result.record.state, result.record.version) == (State.SUSPENDED, 3)


def test_a_writer_that_got_there_first_makes_the_version_check_fail(
    store: Store, create_mission: CreateMission
) -> None:
    # The optimistic UPDATE ... WHERE version = :expected is the last line of defence
    # when a row changed under a caller that did not hold the lock.
    from missionbound.mission.lifecycle import decide_transition
    from missionbound.store.lifecycle import commit_transition
    from missionbound.store.mission_rows import lock_mission

    mission = _mission_in(State.ACTIVE, store, create_mission)
    with pytest.raises(ConcurrentModification), store.begin() as session:
        row = lock_mission(session, mission.mission_id)
        decision = decide_transition(State.ACTIVE, row.version, Event.SUSPEND, {Role.ADMIN})
        session.execute(
            text("UPDATE missions SET version = version + 1 WHERE mission_id = :m"),
            {"m": mission.mission_id},
        )
        commit_transition(session, row, decision, actor=ADMIN, reason=None, now=LATER)


@pytest.mark.parametrize(
    ("event", "roles"),
    [
        ("explode", {Role.ADMIN}),
        (Event.SUSPEND, {"janitor"}),
        (Event.SUSPEND, "admin"),
        (Event.APPROVE, {Role.APPROVER}),
    ],
    ids=["unknown-event", "unknown-role", "roles-as-string", "approve-bypassing-anchors"],
)
def test_bad_input_is_refused_before_any_write(
    store: Store, create_mission: CreateMission, event: object, roles: object
) -> None:
    mission = create_mission()
    with pytest.raises(InvalidRequest), store.begin() as session:
        transition(
            session,
            mission.mission_id,
            event,  # type: ignore[arg-type]
            roles=roles,  # type: ignore[arg-type]
            actor=ADMIN,
            reason=None,
            now=LATER,
        )
    with pytest.raises(InvalidRequest), store.begin() as session:
        transition(
            session,
            mission.mission_id,
            Event.REJECT,
            roles={Role.APPROVER},
            actor=ADMIN,
            reason="x" * 1025,
            now=LATER,
        )
    with store.read() as session:
        assert count_traces(session, mission.mission_id) == Traces(1, 1, 1)


def test_expiry_is_persisted_first_with_its_own_traces_then_the_event_is_refused(
    store: Store, create_mission: CreateMission
) -> None:
    mission = _mission_in(State.ACTIVE, store, create_mission)
    after_expiry = mission.mission_expiry + timedelta(seconds=1)
    with pytest.raises(ConcurrentModification, match="expired"), store.begin() as session:
        by_admin(session, mission.mission_id, Event.SUSPEND, reason="too late", now=after_expiry)
    with store.read() as session:
        stored = missions.get(session, mission.mission_id)
        assert count_traces(session, mission.mission_id) == Traces(3, 3, 3)
        outbox = session.scalars(select(OutboxEvent).order_by(OutboxEvent.id.desc())).first()
    assert stored is not None and outbox is not None
    assert (stored.state, stored.version) == (State.EXPIRED, 3)
    assert stored.lifecycle_history[-1]["actor"] == {"role": "clock"}
    assert stored.lifecycle_history[-1]["reason"] == "mission_expiry passed"
    assert (outbox.payload["state"], outbox.payload["prior_state"]) == ("expired", "active")


def test_the_clock_event_persists_a_due_expiry_in_the_same_transaction(
    store: Store, create_mission: CreateMission
) -> None:
    mission = _mission_in(State.SUSPENDED, store, create_mission)
    with store.begin() as session:
        result = transition(
            session,
            mission.mission_id,
            Event.EXPIRE,
            roles={Role.CLOCK},
            actor=None,
            reason=None,
            now=mission.mission_expiry,
        )
    assert result.clock_expiry is not None and result.clock_expiry.changed
    assert not result.decision.changed
    assert (result.record.state, result.record.version) == (State.EXPIRED, mission.version + 1)


def test_a_lapsed_consent_window_expires_a_pending_mission(
    store: Store, create_mission: CreateMission
) -> None:
    mission = create_mission()
    with pytest.raises(ConcurrentModification), store.begin() as session:
        transition(
            session,
            mission.mission_id,
            Event.REJECT,
            roles={Role.APPROVER},
            actor=None,
            reason=None,
            now=T0 + timedelta(minutes=10),
        )
    with store.read() as session:
        stored = missions.get(session, mission.mission_id)
    assert stored is not None and stored.state is State.EXPIRED


def test_expire_due_sweeps_every_due_mission_once(
    store: Store, create_mission: CreateMission
) -> None:
    short = timedelta(hours=1)
    due_active = _mission_in(State.ACTIVE, store, lambda: create_mission(lifetime=short))
    due_suspended = _mission_in(State.SUSPENDED, store, lambda: create_mission(lifetime=short))
    lapsed_pending = create_mission(lifetime=timedelta(days=3))
    live = _mission_in(State.ACTIVE, store, lambda: create_mission(lifetime=timedelta(days=3)))
    revoked = _mission_in(State.ACTIVE, store, lambda: create_mission(lifetime=short))
    with store.begin() as session:
        by_admin(session, revoked.mission_id, Event.REVOKE, now=T0 + timedelta(minutes=5))
    sweep_at: datetime = T0 + short
    with store.begin() as session:
        assert expire_due(session, sweep_at) == 3
    with store.begin() as session:
        assert expire_due(session, sweep_at) == 0
    with store.read() as session:
        states = {m.mission_id: m.state for m in missions.list_missions(session)}
        expiry_rows = {
            m.mission_id: [h for h in m.lifecycle_history if h["event"] == "expire"]
            for m in missions.list_missions(session)
        }
    assert states == {
        due_active.mission_id: State.EXPIRED,
        due_suspended.mission_id: State.EXPIRED,
        lapsed_pending.mission_id: State.EXPIRED,
        live.mission_id: State.ACTIVE,
        revoked.mission_id: State.REVOKED,
    }
    for mission in (due_active, due_suspended, lapsed_pending):
        assert len(expiry_rows[mission.mission_id]) == 1


def test_an_unknown_stored_state_is_refused_not_read_as_active(
    store: Store, create_mission: CreateMission
) -> None:
    mission = _mission_in(State.ACTIVE, store, create_mission)
    with store.begin() as session:
        session.execute(
            text("UPDATE missions SET state = 'dormant' WHERE mission_id = :m"),
            {"m": mission.mission_id},
        )
    with store.read() as session, pytest.raises(InvalidState):
        missions.get(session, mission.mission_id)
    with pytest.raises(InvalidState), store.begin() as session:
        by_admin(session, mission.mission_id, Event.REVOKE)


def test_commit_transition_commits_to_the_record_it_writes_not_to_the_row_object(
    store: Store, create_mission: CreateMission
) -> None:
    # The approval replaces the record through ``column_updates``; the audit record must
    # commit to that record, passed on explicitly, even when no session synchronization
    # reaches the row object (here: detached before the UPDATE).
    from missionbound import audit as audit_spine
    from missionbound.mission.lifecycle import decide_transition
    from missionbound.store.lifecycle import commit_transition
    from missionbound.store.mission_rows import lock_mission

    mission = create_mission()
    approval = make_approval(mission)
    approved_at = T0 + timedelta(minutes=1)
    with store.begin() as session:
        row = lock_mission(session, mission.mission_id)
        members = missions._approval_members(
            row.record,
            approver=approval.approver,
            subject=None,
            approval_event_id=approval.approval_event_id,
            anchors=approval.anchors,
            consent_disclosure=approval.consent_disclosure,
            authority_set=approval.authority_set,
            policy_version=approval.policy_version,
            now=approved_at,
        )
        session.expunge(row)
        decision = decide_transition(State.PENDING_APPROVAL, 1, Event.APPROVE, {Role.APPROVER})
        commit_transition(
            session,
            row,
            decision,
            actor={"role": "approver", **approval.approver.as_dict()},
            reason=None,
            now=approved_at,
            column_updates={
                "record": {**row.record, **members},
                "activated_at": approved_at,
                "approval_event_id": approval.approval_event_id,
            },
        )
    with store.read() as session:
        stored_record = session.get(Mission, mission.mission_id).record  # type: ignore[union-attr]
        last = session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
    assert last is not None
    assert last.data["record_digest"] == digest_json(stored_record)
    assert last.authority_hash == approval.anchors.authority_hash
    assert audit_spine.verify(store.engine).ok


@pytest.mark.parametrize("event", [Event.SUSPEND, Event.REVOKE, Event.COMPLETE])
def test_an_event_over_a_record_rewritten_behind_the_as_is_refused(
    store: Store, create_mission: CreateMission, event: Event
) -> None:
    from missionbound.store.errors import MissionRecordTampered

    mission = _mission_in(State.ACTIVE, store, create_mission)  # audit records 1, 2
    with store.begin() as session:
        row = session.get(Mission, mission.mission_id)
        assert row is not None
        row.record = {**row.record, "narrowing_decisions": [{"forged": True}]}
    with store.read() as session:
        traces_before = count_traces(session, mission.mission_id)
    with pytest.raises(MissionRecordTampered) as raised, store.begin() as session:
        transition(
            session,
            mission.mission_id,
            event,
            roles={ROLE_FOR[event]},
            actor=ADMIN,
            reason=None,
            now=LATER,
        )
    assert raised.value.status == 409 and raised.value.error == "invalid_state"
    assert raised.value.audit_seq == 2
    assert "does not match its last lifecycle audit record (audit record 2)" in str(raised.value)
    with store.read() as session:
        stored = missions.get(session, mission.mission_id)
        assert count_traces(session, mission.mission_id) == traces_before
    assert stored is not None and stored.state is State.ACTIVE


def test_expire_due_refuses_to_expire_a_rewritten_record(
    store: Store, create_mission: CreateMission
) -> None:
    # One transaction for the whole batch: the tampered Mission fails it, nothing moves.
    from missionbound.store.errors import MissionRecordTampered

    short = timedelta(hours=1)
    tampered = _mission_in(State.ACTIVE, store, lambda: create_mission(lifetime=short))
    other = _mission_in(State.ACTIVE, store, lambda: create_mission(lifetime=short))
    with store.begin() as session:
        row = session.get(Mission, tampered.mission_id)
        assert row is not None
        row.record = {**row.record, "narrowing_decisions": [{"forged": True}]}
    with pytest.raises(MissionRecordTampered), store.session() as session, session.begin():
        expire_due(session, T0 + short)
    with store.read() as session:
        states = {m.mission_id: m.state for m in missions.list_missions(session)}
    assert states == {tampered.mission_id: State.ACTIVE, other.mission_id: State.ACTIVE}


def test_a_retry_of_a_committed_request_succeeds_but_a_future_version_is_a_409(
    store: Store, create_mission: CreateMission
) -> None:
    # The idempotent repeat is decided before expected_version (docs/storage.md, "Lifecycle
    # transitions"); a version the Mission never had is not a retry.
    mission = _mission_in(State.ACTIVE, store, create_mission)  # version 2
    for _ in range(2):  # the request, then its retry after it committed
        with store.begin() as session:
            result = by_admin(session, mission.mission_id, Event.SUSPEND, expected_version=2)
        assert (result.record.state, result.record.version) == (State.SUSPENDED, 3)
    assert not result.decision.changed
    with pytest.raises(ConcurrentModification), store.begin() as session:
        by_admin(session, mission.mission_id, Event.SUSPEND, expected_version=4)
    with store.read() as session:
        assert count_traces(session, mission.mission_id) == Traces(3, 3, 3)
