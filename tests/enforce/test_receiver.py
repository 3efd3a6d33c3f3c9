"""SignalReceiver: verified SETs applied by version, duplicates recognised by jti, the event
bodies of PROFILE.md section 10 checked, other events taken without changing anything."""

from __future__ import annotations

from typing import Any

import pytest

from missionbound.enforce.signals import (
    LIFECYCLE_CHANGE,
    SESSION_REVOKED,
    VERIFICATION,
    MissionState,
    MissionStateBook,
    Outcome,
    SetRejected,
)
from tests.enforce.support import receiver_for
from tests.protocol.secevents import (
    AUDIENCE,
    DROP,
    IAT,
    ISSUER,
    MISSION_ID,
    Transmitter,
    lifecycle_event,
)

T = Transmitter()


def rejected(token: str, err: str = "invalid_request", **options: Any) -> SetRejected:
    receiver = receiver_for(T, **options)
    with pytest.raises(SetRejected) as caught:
        receiver.receive(token)
    assert caught.value.err == err, caught.value.description
    assert len(receiver.book) == 0
    return caught.value


def test_a_lifecycle_change_is_applied() -> None:
    receiver = receiver_for(T)
    taken = receiver.receive(T.sign(lifecycle_event("active", 2, reason="approved"), jti="j1"))
    assert taken.outcome is Outcome.APPLIED and taken.jti == "j1"
    assert taken.event_types == (LIFECYCLE_CHANGE,)
    expected = MissionState(mission_id=MISSION_ID, origin=ISSUER, state="active", version=2,
                            committed_at="2026-03-02T09:00:00Z",
                            prior_state="pending_approval", reason="approved")
    assert taken.state == expected
    assert receiver.book.get(MISSION_ID) == expected
    assert receiver.book.is_active(MISSION_ID)
    assert taken.claims["aud"] == AUDIENCE


def test_the_same_jti_again_is_a_duplicate_acknowledged_not_applied() -> None:
    book = MissionStateBook()
    heard: list[int] = []
    book.subscribe(lambda s: heard.append(s.version))
    receiver = receiver_for(T, book=book)
    token = T.sign(lifecycle_event("suspended", 3))
    assert receiver.receive(token).outcome is Outcome.APPLIED
    again = receiver.receive(token)
    assert again.outcome is Outcome.DUPLICATE
    assert again.state is not None and again.state.version == 3
    assert heard == [3]


def test_an_older_or_equal_version_under_a_new_jti_is_stale() -> None:
    receiver = receiver_for(T)
    receiver.receive(T.sign(lifecycle_event("revoked", 5)))
    assert receiver.receive(T.sign(lifecycle_event("active", 4))).outcome is Outcome.STALE
    assert receiver.receive(T.sign(lifecycle_event("revoked", 5))).outcome is Outcome.STALE
    held = receiver.book.get(MISSION_ID)
    assert held is not None and (held.state, held.version) == ("revoked", 5)
    assert not receiver.book.is_active(MISSION_ID)


def test_out_of_order_delivery_ends_at_the_newest() -> None:
    receiver = receiver_for(T)
    tokens = {v: T.sign(lifecycle_event(s, v)) for v, s in
              [(1, "pending_approval"), (2, "active"), (3, "suspended"), (4, "active"),
               (5, "revoked")]}
    outcomes = [receiver.receive(tokens[v]).outcome for v in (2, 5, 1, 4, 3, 5)]
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.STALE, Outcome.STALE,
                        Outcome.STALE, Outcome.DUPLICATE]
    assert not receiver.book.is_active(MISSION_ID)


def test_the_jti_memory_is_bounded() -> None:
    receiver = receiver_for(T, remember_jtis=2)
    first = T.sign(lifecycle_event("active", 1))
    receiver.receive(first)
    receiver.receive(T.sign(lifecycle_event("active", 2)))
    assert receiver.receive(first).outcome is Outcome.DUPLICATE  # still remembered
    receiver.receive(T.sign(lifecycle_event("active", 3)))
    receiver.receive(T.sign(lifecycle_event("active", 4)))
    # Forgotten: taken again, and the version rule keeps it from undoing anything.
    assert receiver.receive(first).outcome is Outcome.STALE


def test_a_transmitter_speaks_only_for_its_own_missions() -> None:
    error = rejected(T.sign(lifecycle_event(origin="https://other-as.example")))
    assert "other-as.example" in error.description


@pytest.mark.parametrize("body", [
    {"mission": DROP}, {"mission": "msn_1"}, {"mission": {"id": MISSION_ID}},
    {"mission": {"id": "", "origin": ISSUER}}, {"mission": {"id": 5, "origin": ISSUER}},
    {"state": DROP}, {"state": ""}, {"state": 3},
    {"version": DROP}, {"version": "2"}, {"version": -1}, {"version": True},
    {"version": 2.0}, {"prior_state": 1}, {"committed_at": 1700000000}, {"reason": ["x"]},
])
def test_an_ill_formed_lifecycle_change_is_refused(body: dict[str, Any]) -> None:
    event = {**lifecycle_event()[LIFECYCLE_CHANGE], **body}
    event = {name: value for name, value in event.items() if value is not DROP}
    rejected(T.sign({LIFECYCLE_CHANGE: event}, sub_id=DROP))


def test_null_and_absent_optional_members_are_accepted() -> None:
    event = lifecycle_event("pending_approval", 1, prior_state=None)[LIFECYCLE_CHANGE]
    del event["reason"]
    event["committed_at"] = None
    taken = receiver_for(T).receive(T.sign({LIFECYCLE_CHANGE: event}, sub_id=DROP))
    assert taken.state is not None and taken.state.prior_state is None


@pytest.mark.parametrize("sub_id", [{"format": "opaque", "id": "msn_other"},
                                    {"format": "email", "email": "a@b.example"}, "msn"])
def test_the_subject_when_given_is_the_mission(sub_id: Any) -> None:
    rejected(T.sign(sub_id=sub_id))


def test_verification_problems_keep_their_codes() -> None:
    rejected(T.sign(aud="someone-else"), "invalid_audience")
    rejected(T.sign(iss="https://evil.example"), "invalid_issuer")
    rejected(Transmitter(kid=T.kid).sign(), "authentication_failed")
    rejected(T.sign(iat=IAT - 3600), "invalid_request", max_age_seconds=600)


def test_session_revoked_is_reported_without_changing_state() -> None:
    receiver = receiver_for(T)
    receiver.receive(T.sign(lifecycle_event("active", 2)))
    body = {"mission": {"id": MISSION_ID, "origin": ISSUER}, "event_timestamp": IAT,
            "reason_admin": {"en": "stop"}}
    taken = receiver.receive(T.sign({SESSION_REVOKED: body}))
    assert taken.outcome is Outcome.IGNORED and taken.state is None
    assert taken.session_revoked_mission == MISSION_ID
    assert receiver.book.is_active(MISSION_ID)  # the lifecycle-change SET says revoked
    other = {"mission": {"id": MISSION_ID, "origin": "https://other.example"}}
    with pytest.raises(SetRejected):
        receiver.receive(T.sign({SESSION_REVOKED: other}))
    no_mission = receiver.receive(T.sign({SESSION_REVOKED: {"event_timestamp": IAT}}))
    assert no_mission.session_revoked_mission is None


def test_verification_events_are_recorded() -> None:
    receiver = receiver_for(T)
    stream = {"format": "opaque", "id": "stream-1"}
    first = receiver.receive(T.sign({VERIFICATION: {"state": "abc"}}, sub_id=stream))
    assert first.verification and first.verification_state == "abc"
    assert first.outcome is Outcome.IGNORED
    receiver.receive(T.sign({VERIFICATION: {}}, sub_id=stream))
    duplicate = T.sign({VERIFICATION: {"state": "xyz"}}, sub_id=stream)
    receiver.receive(duplicate)
    receiver.receive(duplicate)
    assert receiver.verification_states == ["abc", None, "xyz"]
    with pytest.raises(SetRejected):
        receiver.receive(T.sign({VERIFICATION: {"state": 7}}))
    assert len(receiver.book) == 0


def test_unknown_event_types_are_taken_and_ignored() -> None:
    receiver = receiver_for(T)
    taken = receiver.receive(T.sign({"https://example.com/event/new-thing": {"a": 1}}))
    assert taken.outcome is Outcome.IGNORED and taken.event_types == (
        "https://example.com/event/new-thing",)
    assert len(receiver.book) == 0


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        receiver_for(T, remember_jtis=0)
    with pytest.raises(ValueError):
        receiver_for(T).__class__(issuer="", audience=AUDIENCE, keys=receiver_for(T).keys)
