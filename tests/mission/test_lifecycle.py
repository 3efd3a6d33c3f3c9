"""The seven-state lifecycle machine (PROFILE.md section 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from missionbound.mission.errors import (
    ConcurrentModification,
    InvalidRequest,
    InvalidState,
    TransitionForbidden,
)
from missionbound.mission.lifecycle import (
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    LifecyclePolicy,
    Role,
    State,
    allowed_roles,
    decide_transition,
    effective_state,
    is_effectively_active,
    parse_state,
)

EVERYONE = frozenset(Role)

LEGAL = [
    (State.PENDING_APPROVAL, Event.APPROVE, State.ACTIVE),
    (State.PENDING_APPROVAL, Event.REJECT, State.REJECTED),
    (State.PENDING_APPROVAL, Event.EXPIRE, State.EXPIRED),
    (State.ACTIVE, Event.SUSPEND, State.SUSPENDED),
    (State.SUSPENDED, Event.RESUME, State.ACTIVE),
    (State.ACTIVE, Event.REVOKE, State.REVOKED),
    (State.SUSPENDED, Event.REVOKE, State.REVOKED),
    (State.ACTIVE, Event.COMPLETE, State.COMPLETED),
    (State.SUSPENDED, Event.COMPLETE, State.COMPLETED),
    (State.ACTIVE, Event.EXPIRE, State.EXPIRED),
    (State.SUSPENDED, Event.EXPIRE, State.EXPIRED),
]


def test_seven_states_four_terminal() -> None:
    assert len(State) == 7
    assert {s.value for s in TERMINAL_STATES} == {"revoked", "completed", "expired", "rejected"}
    assert {(f, e, t) for (f, e), t in TRANSITIONS.items()} == set(LEGAL)


@pytest.mark.parametrize("current, event, target", LEGAL)
def test_legal_transitions_bump_the_version(current: State, event: Event, target: State
                                            ) -> None:
    decision = decide_transition(current, 4, event, EVERYONE)
    assert (decision.from_state, decision.to_state) == (current, target)
    assert (decision.from_version, decision.to_version) == (4, 5)
    assert decision.changed


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_pair_has_exactly_one_outcome(state: State, event: Event) -> None:
    legal = (state, event) in TRANSITIONS
    target_is_current = {
        Event.APPROVE: State.ACTIVE, Event.REJECT: State.REJECTED, Event.SUSPEND: State.SUSPENDED,
        Event.RESUME: State.ACTIVE, Event.REVOKE: State.REVOKED, Event.COMPLETE: State.COMPLETED,
        Event.EXPIRE: State.EXPIRED}[event] is state
    if legal or target_is_current:
        decision = decide_transition(state, 1, event, EVERYONE)
        assert decision.changed is legal
        if not legal:
            assert decision.to_version == 1  # idempotent repeat: no new version, no event
    elif state in TERMINAL_STATES:
        with pytest.raises(ConcurrentModification):
            decide_transition(state, 1, event, EVERYONE)
    else:
        with pytest.raises(InvalidState) as caught:
            decide_transition(state, 1, event, EVERYONE)
        assert caught.value.status == 409 and caught.value.error == "invalid_state"


def test_idempotent_repeats() -> None:
    for state, event in [(State.REVOKED, Event.REVOKE), (State.SUSPENDED, Event.SUSPEND),
                         (State.ACTIVE, Event.RESUME), (State.COMPLETED, Event.COMPLETE)]:
        decision = decide_transition(state, 7, event, EVERYONE)
        assert not decision.changed and decision.to_version == 7


def test_terminal_missions_refuse_other_events_with_concurrent_modification() -> None:
    with pytest.raises(ConcurrentModification) as caught:
        decide_transition(State.REVOKED, 3, Event.RESUME, EVERYONE)
    assert caught.value.error == "mission_concurrent_modification"
    assert caught.value.status == 409
    with pytest.raises(ConcurrentModification):
        decide_transition(State.EXPIRED, 3, Event.REVOKE, EVERYONE)


def test_expected_version() -> None:
    decide_transition(State.ACTIVE, 3, Event.SUSPEND, EVERYONE, expected_version=3)
    with pytest.raises(ConcurrentModification, match="expected version 2"):
        decide_transition(State.ACTIVE, 3, Event.SUSPEND, EVERYONE, expected_version=2)
    with pytest.raises(ConcurrentModification, match="expected version 2"):
        decide_transition(State.REVOKED, 3, Event.RESUME, EVERYONE, expected_version=2)
    for not_an_integer in (True, "3", 3.0):
        with pytest.raises(InvalidRequest, match="expected_version must be an integer"):
            decide_transition(State.ACTIVE, 1, Event.SUSPEND, EVERYONE,
                              expected_version=not_an_integer)  # type: ignore[arg-type]


def test_a_retried_request_whose_first_attempt_committed_still_succeeds() -> None:
    # The client revoked at version 3, lost the response and retries with the same
    # expected_version: the Mission is where it asked it to be, so it is an idempotent success.
    first = decide_transition(State.ACTIVE, 3, Event.REVOKE, EVERYONE, expected_version=3)
    retry = decide_transition(first.to_state, first.to_version, Event.REVOKE, EVERYONE,
                              expected_version=3)
    assert not retry.changed and retry.to_version == 4
    # ... but a version the Mission never reached is no retry
    with pytest.raises(ConcurrentModification, match="expected version 9"):
        decide_transition(State.REVOKED, 4, Event.REVOKE, EVERYONE, expected_version=9)


@pytest.mark.parametrize(
    "event, allowed",
    [
        (Event.APPROVE, {Role.APPROVER}),
        (Event.REJECT, {Role.APPROVER}),
        (Event.SUSPEND, {Role.ADMIN}),
        (Event.RESUME, {Role.ADMIN}),
        (Event.REVOKE, {Role.SUBJECT, Role.APPROVER, Role.ADMIN}),
        (Event.COMPLETE, {Role.CLIENT, Role.ADMIN}),
        (Event.EXPIRE, {Role.CLOCK}),
    ],
)
def test_who_may_trigger(event: Event, allowed: set[Role]) -> None:
    assert allowed_roles(event) == allowed
    for role in Role:
        if role in allowed:
            continue
        with pytest.raises(TransitionForbidden):
            decide_transition(State.ACTIVE, 1, event, {role})


def test_policy_may_let_the_subject_suspend() -> None:
    with pytest.raises(TransitionForbidden):
        decide_transition(State.ACTIVE, 1, Event.SUSPEND, {Role.SUBJECT})
    policy = LifecyclePolicy(subject_may_suspend=True)
    assert decide_transition(State.ACTIVE, 1, Event.SUSPEND, {Role.SUBJECT}, policy=policy
                             ).to_state is State.SUSPENDED


def test_authorization_is_checked_before_anything_else() -> None:
    # An unauthorized caller learns nothing about state or version.
    with pytest.raises(TransitionForbidden):
        decide_transition(State.REVOKED, 9, Event.RESUME, {Role.CLIENT}, expected_version=1)


T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
EXPIRY = T0 + timedelta(hours=1)


def test_effective_state_is_clock_first() -> None:
    def eff(stored: State, now: datetime) -> State:
        return effective_state(stored, now=now, mission_expiry=EXPIRY, created_at=T0)

    assert eff(State.ACTIVE, EXPIRY - timedelta(seconds=1)) is State.ACTIVE
    assert eff(State.ACTIVE, EXPIRY) is State.EXPIRED
    assert eff(State.SUSPENDED, EXPIRY) is State.EXPIRED
    assert eff(State.REVOKED, EXPIRY) is State.REVOKED  # terminal states stay what they are
    assert eff(State.PENDING_APPROVAL, T0 + timedelta(minutes=9)) is State.PENDING_APPROVAL
    assert eff(State.PENDING_APPROVAL, T0 + timedelta(minutes=10)) is State.EXPIRED


def test_only_the_exact_string_active_is_active() -> None:
    before = EXPIRY - timedelta(seconds=1)
    assert is_effectively_active("active", now=before, mission_expiry=EXPIRY)
    assert not is_effectively_active("active", now=EXPIRY, mission_expiry=EXPIRY)
    for value in ["ACTIVE", "active ", "suspended", "superseded", ""]:
        assert not is_effectively_active(value, now=before, mission_expiry=EXPIRY)


def test_unknown_stored_state_fails_closed() -> None:
    assert parse_state("active") is State.ACTIVE
    with pytest.raises(InvalidState, match="unknown Mission state 'superseded'"):
        parse_state("superseded")
