"""The derivation gate (PROFILE.md section 8): only an effectively active Mission below its
cap derives; check and increment are atomic with issuance; a revoke committed first wins."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from missionbound import audit
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord
from missionbound.store import missions
from missionbound.store.errors import DerivationRefused
from missionbound.store.gate import gate_derivation
from missionbound.store.lifecycle import transition
from missionbound.store.models import AuditRecord
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently
from tests.store.factories import T0, Traces, count_traces

CreateMission = Callable[..., MissionRecord]
NOW = T0 + timedelta(minutes=5)


def issue_token(store: Store, mission_id: str) -> int:
    """What the token endpoint does: gate, then record the issuance, in one transaction."""
    with store.begin() as session:
        count = gate_derivation(session, mission_id, now=NOW)
        audit.append(
            session,
            event="token.issued",
            mission_id=mission_id,
            actor={"client_id": "demo-agent"},
            anchors=None,
            policy_version=None,
            data={"jti": secrets.token_urlsafe(8), "derivation": count},
            at=NOW,
        )
        return count


def test_an_active_mission_derives_up_to_its_cap(
    store: Store, active_mission: CreateMission
) -> None:
    mission = active_mission(max_derivations=3)
    assert [issue_token(store, mission.mission_id) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(DerivationRefused) as refused:
        issue_token(store, mission.mission_id)
    assert refused.value.status == 400
    assert refused.value.to_wire() == {
        "error": "invalid_grant",
        "error_description": "the Mission's 3 derivations are used up",
        "mission_state": "active",
        "mission_error": "derivations_exhausted",
    }
    with store.read() as session:
        assert missions.derivation_count(session, mission.mission_id) == 3


def test_without_a_cap_the_gate_only_counts(store: Store, active_mission: CreateMission) -> None:
    mission = active_mission()
    assert [issue_token(store, mission.mission_id) for _ in range(5)] == [1, 2, 3, 4, 5]


def test_a_failed_issuance_is_not_counted(store: Store, active_mission: CreateMission) -> None:
    mission = active_mission(max_derivations=1)

    class SigningFailed(Exception):
        pass

    with pytest.raises(SigningFailed), store.begin() as session:
        gate_derivation(session, mission.mission_id, now=NOW)
        raise SigningFailed
    with store.read() as session:
        assert missions.derivation_count(session, mission.mission_id) == 0
    assert issue_token(store, mission.mission_id) == 1


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (Event.SUSPEND, State.SUSPENDED),
        (Event.REVOKE, State.REVOKED),
        (Event.COMPLETE, State.COMPLETED),
    ],
)
def test_a_mission_that_is_not_active_derives_nothing(
    store: Store, active_mission: CreateMission, event: Event, state: State
) -> None:
    mission = active_mission()
    with store.begin() as session:
        transition(
            session,
            mission.mission_id,
            event,
            roles={Role.ADMIN},
            actor={"role": "admin"},
            reason=None,
            now=NOW,
        )
    with pytest.raises(DerivationRefused) as refused:
        issue_token(store, mission.mission_id)
    assert refused.value.to_wire()["mission_state"] == state.value
    assert refused.value.mission_error == f"mission_{state.value}"
    with store.read() as session:
        assert missions.derivation_count(session, mission.mission_id) == 0


def test_a_pending_mission_derives_nothing(store: Store, create_mission: CreateMission) -> None:
    mission = create_mission()
    with pytest.raises(DerivationRefused) as refused:
        issue_token(store, mission.mission_id)
    assert refused.value.mission_state == "pending_approval"


def test_an_unknown_mission_derives_nothing(store: Store) -> None:
    with pytest.raises(DerivationRefused) as refused:
        issue_token(store, "msn_" + "Z" * 32)
    assert "mission_state" not in refused.value.to_wire()


def test_past_expiry_a_stored_active_mission_is_refused_and_its_expiry_persisted(
    store: Store, active_mission: CreateMission
) -> None:
    mission = active_mission()
    at_expiry = mission.mission_expiry
    with pytest.raises(DerivationRefused) as refused, store.begin() as session:
        gate_derivation(session, mission.mission_id, now=at_expiry)
    assert (refused.value.mission_state, refused.value.mission_error) == (
        "expired",
        "mission_expired",
    )
    with store.read() as session:
        stored = missions.get(session, mission.mission_id)
        assert count_traces(session, mission.mission_id) == Traces(3, 3, 3)
        assert missions.derivation_count(session, mission.mission_id) == 0
    assert stored is not None and stored.state is State.EXPIRED


def test_past_expiry_a_plain_session_is_refused_too(
    store: Store, active_mission: CreateMission
) -> None:
    # Without Store.begin nobody persists the expiry afterwards: the refusal alone matters.
    mission = active_mission()
    with store.session() as session, session.begin():
        with pytest.raises(DerivationRefused):
            gate_derivation(session, mission.mission_id, now=mission.mission_expiry)
        session.rollback()


def test_200_concurrent_derivations_against_a_cap_of_50_issue_exactly_50(
    store: Store, active_mission: CreateMission
) -> None:
    mission = active_mission(max_derivations=50)
    results = run_concurrently(200, lambda _: issue_token(store, mission.mission_id))
    issued = sorted(r for r in results if isinstance(r, int))
    refused = [r for r in results if isinstance(r, DerivationRefused)]
    unexpected = [r for r in results if not isinstance(r, (int, DerivationRefused))]
    assert unexpected == []
    assert issued == list(range(1, 51))
    assert len(refused) == 150
    assert {r.mission_error for r in refused} == {"derivations_exhausted"}
    with store.read() as session:
        assert missions.derivation_count(session, mission.mission_id) == 50
        tokens = session.scalars(
            select(AuditRecord).where(AuditRecord.event == "token.issued")
        ).all()
    assert len(tokens) == 50
    assert audit.verify(store.engine).ok


def test_a_revoke_racing_200_derivations_is_never_followed_by_a_token(
    store: Store, active_mission: CreateMission
) -> None:
    mission = active_mission()
    first_tokens = threading.Event()
    revoke_started = threading.Event()
    issued_so_far = []
    lock = threading.Lock()

    def derive(index: int) -> int:
        if index >= 100:
            # The second half races the revoke itself.
            assert revoke_started.wait(60)
        count = issue_token(store, mission.mission_id)
        with lock:
            issued_so_far.append(count)
            if len(issued_so_far) >= 20:
                first_tokens.set()
        return count

    def revoke() -> int:
        assert first_tokens.wait(60)
        revoke_started.set()
        with store.begin() as session:
            transition(
                session,
                mission.mission_id,
                Event.REVOKE,
                roles={Role.SUBJECT},
                actor={"role": "subject", "sub": "alice"},
                reason="race",
                now=NOW,
            )
        return -1

    results = run_concurrently(201, lambda i: revoke() if i == 200 else derive(i))
    # An acknowledged revoke: everything from here on must be refused.
    after = [issue_token_or_refusal(store, mission.mission_id) for _ in range(10)]

    issued = [r for r in results[:200] if isinstance(r, int)]
    refused = [r for r in results[:200] + after if isinstance(r, DerivationRefused)]
    assert results[200] == -1
    assert len(issued) + len(refused) == 210
    assert len(issued) >= 20 and len(refused) >= 10
    assert {(r.mission_state, r.mission_error) for r in refused} == {("revoked", "mission_revoked")}
    with store.read() as session:
        token_seqs = session.scalars(
            select(AuditRecord.seq).where(AuditRecord.event == "token.issued")
        ).all()
        revoke_seq = session.scalars(
            select(AuditRecord.seq).where(
                AuditRecord.event == "mission.transition",
                AuditRecord.data["event"].as_string() == "revoke",
            )
        ).one()
        assert missions.derivation_count(session, mission.mission_id) == len(issued)
    assert len(token_seqs) == len(issued)
    # The audit log's global order is the commit order: every token precedes the revoke.
    assert max(token_seqs) < revoke_seq
    assert audit.verify(store.engine).ok


def issue_token_or_refusal(store: Store, mission_id: str) -> int | DerivationRefused:
    try:
        return issue_token(store, mission_id)
    except DerivationRefused as refused:
        return refused


@pytest.mark.parametrize("stored_cap", ["50", True, 0, None])
def test_a_malformed_stored_cap_refuses_instead_of_lifting_the_limit(
    store: Store, active_mission: CreateMission, stored_cap: object
) -> None:
    # Intake never stores such a cap; only a bug or tampering could. Fail closed: no token.
    from missionbound.store.models import Mission

    mission = active_mission(max_derivations=5)
    with store.begin() as session:
        row = session.get(Mission, mission.mission_id)
        assert row is not None
        record = dict(row.record)
        intent = dict(record["mission_intent"])
        intent["context"] = {**intent["context"], "max_derivations": stored_cap}
        row.record = {**record, "mission_intent": intent}
    with pytest.raises(DerivationRefused) as refused:
        issue_token(store, mission.mission_id)
    assert refused.value.to_wire()["mission_error"] == "derivations_exhausted"
