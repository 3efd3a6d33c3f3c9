"""The fan-out: every committed transition of a Mission becomes one SET per stream whose
client may see that Mission (the Mission's own client; a Resource Server the Mission's
authority names), in order, with the claims PROFILE.md section 10 and the plan's SET
contract give; nobody else gets anything. The outbox event and the SETs commit together."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from missionbound.issuer import signal_delivery
from missionbound.issuer.signal_delivery import SignalTransmitter
from missionbound.mission.lifecycle import Event, Role
from missionbound.store import missions, outbox
from missionbound.store import signals as signal_rows
from missionbound.store.lifecycle import transition
from missionbound.store.models import OutboxEvent, SignalDelivery
from tests.issuer.flow import ISSUER, Flow
from tests.signals.conftest import Streams
from tests.signals.support import (
    AGENT,
    LIFECYCLE_CHANGE,
    NARROW,
    RS,
    SESSION_REVOKED,
    SUBAGENT,
    event_of,
)
from tests.store.factories import make_approval, make_record


def change(flow: Flow, mission_id: str, event: Event, reason: str = "test") -> None:
    """An administrator's lifecycle event, committed straight to the store."""
    with flow.store.begin() as session:
        result = transition(session, mission_id, event, roles={Role.ADMIN},
                            actor={"role": "admin", "sub": "bob"}, reason=reason, now=flow.now())
    assert result.decision.changed


def received(streams: Streams, auth: tuple[str, str], stream_id: str,
             mission_id: str | None = None) -> list[dict[str, Any]]:
    """Poll (acknowledging everything) until the stream owes nothing; the verified claims,
    in order, of the given Mission's SETs (all when None)."""
    out: list[dict[str, Any]] = []
    ack: list[str] = []
    while True:
        answer = streams.polled(auth, stream_id, ack=ack, maxEvents=10)
        ack = list(answer["sets"])
        out += streams.claims(list(answer["sets"].values()))
        if not answer["sets"] and not answer["moreAvailable"]:
            break
    return [c for c in out if mission_id is None or c["sub_id"]["id"] == mission_id]


def lifecycle(claims: list[dict[str, Any]]) -> list[tuple[str, Any, Any, int]]:
    """(event type, state, prior_state, version) of each SET."""
    out = []
    for item in claims:
        event_type, body = event_of(item)
        out.append((event_type, body.get("state"), body.get("prior_state"),
                    body.get("version", 0)))
    return out


def test_every_transition_reaches_exactly_the_streams_that_may_see_the_mission(
    flow: Flow, streams: Streams
) -> None:
    rs = streams.poll(RS)["stream_id"]
    agent = streams.poll(AGENT)["stream_id"]
    subagent = streams.poll(SUBAGENT)["stream_id"]
    narrow = streams.poll(NARROW)["stream_id"]
    grant = flow.grant()
    mission_id = grant.mission_id
    change(flow, mission_id, Event.SUSPEND, "investigating")
    change(flow, mission_id, Event.RESUME, "cleared")
    change(flow, mission_id, Event.REVOKE, "done with it")
    expected = [
        (LIFECYCLE_CHANGE, "pending_approval", None, 1),
        (LIFECYCLE_CHANGE, "active", "pending_approval", 2),
        (LIFECYCLE_CHANGE, "suspended", "active", 3),
        (LIFECYCLE_CHANGE, "active", "suspended", 4),
        (LIFECYCLE_CHANGE, "revoked", "active", 5),
        (SESSION_REVOKED, None, None, 0),
    ]
    record = flow.mission(mission_id)
    history = {entry["version"]: entry for entry in record.lifecycle_history}
    for auth, stream_id in ((RS, rs), (AGENT, agent)):
        claims = received(streams, auth, stream_id, mission_id)
        assert lifecycle(claims) == expected
        for item in claims:
            assert item["iss"] == ISSUER and item["aud"] == auth[0]
            assert item["sub_id"] == {"format": "opaque", "id": mission_id}
            assert set(item) == {"iss", "aud", "iat", "jti", "sub_id", "events"}
        assert len({item["jti"] for item in claims}) == len(claims)
        _, suspended = event_of(claims[2])
        assert suspended == {
            "mission": {"id": mission_id, "origin": ISSUER},
            "state": "suspended", "prior_state": "active", "version": 3,
            "committed_at": history[3]["committed_at"], "reason": "investigating",
        }
        _, revoked = event_of(claims[5])
        assert revoked["mission"] == {"id": mission_id, "origin": ISSUER}
        assert revoked["reason_admin"] == {"en": "done with it"}
        assert isinstance(revoked["event_timestamp"], int)
    # Neither the delegate nor another agent is the Mission's client or one of its audiences.
    assert received(streams, SUBAGENT, subagent, mission_id) == []
    assert received(streams, NARROW, narrow, mission_id) == []


def test_a_resource_server_gets_only_missions_that_name_its_resources(
    flow: Flow, streams: Streams
) -> None:
    rs = streams.poll(RS)["stream_id"]
    agent = streams.poll(AGENT)["stream_id"]
    # demo-agent's Mission for another AS's ERP: not one of demo-rs's audiences.
    record = make_record(created_at=flow.now() - timedelta(minutes=1))
    with flow.store.begin() as session:
        missions.create_pending(session, record, {"role": "client"}, record.created_at)
    with flow.store.begin() as session:
        missions.approve(session, record.mission_id, now=flow.now(),
                         **make_approval(record).kwargs())
    assert received(streams, RS, rs, record.mission_id) == []
    assert lifecycle(received(streams, AGENT, agent, record.mission_id)) == [
        (LIFECYCLE_CHANGE, "pending_approval", None, 1),
        (LIFECYCLE_CHANGE, "active", "pending_approval", 2),
    ]


def test_a_stream_gets_only_the_events_it_asked_for(flow: Flow, streams: Streams) -> None:
    revocations = streams.poll(RS, events_requested=[SESSION_REVOKED])["stream_id"]
    changes = streams.poll(RS, events_requested=[LIFECYCLE_CHANGE])["stream_id"]
    grant = flow.grant()
    change(flow, grant.mission_id, Event.REVOKE)
    assert [t for t, *_ in lifecycle(received(streams, RS, revocations, grant.mission_id))] == [
        SESSION_REVOKED]
    assert [s for _, s, *_ in lifecycle(received(streams, RS, changes, grant.mission_id))] == [
        "pending_approval", "active", "revoked"]


def test_paused_streams_hold_events_and_disabled_ones_drop_them(
    flow: Flow, streams: Streams
) -> None:
    paused = streams.poll(RS)["stream_id"]
    disabled = streams.poll(RS)["stream_id"]
    for stream_id, status in ((paused, "paused"), (disabled, "disabled")):
        assert flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": status},
                                auth=RS).status_code == 200
    grant = flow.grant()
    # Nothing is handed out while paused or disabled...
    assert streams.polled(RS, paused) == {"sets": {}, "moreAvailable": False}
    assert streams.polled(RS, disabled) == {"sets": {}, "moreAvailable": False}
    for stream_id in (paused, disabled):
        flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": "enabled"},
                         auth=RS)
    # ...the paused stream held them; the disabled one never queued them.
    assert [s for _, s, *_ in lifecycle(received(streams, RS, paused, grant.mission_id))] == [
        "pending_approval", "active"]
    assert received(streams, RS, disabled, grant.mission_id) == []


def test_disabling_a_stream_drops_what_it_had_queued(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    grant = flow.grant()
    streams.transmitter.fan_out()
    assert queued(flow, stream_id) == 2
    flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": "disabled"}, auth=RS)
    assert queued(flow, stream_id) == 0
    flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": "enabled"}, auth=RS)
    change(flow, grant.mission_id, Event.SUSPEND)
    assert [s for _, s, *_ in lifecycle(received(streams, RS, stream_id, grant.mission_id))] == [
        "suspended"]


def queued(flow: Flow, stream_id: str) -> int:
    with flow.store.read() as session, session.begin():
        return int(session.scalar(select(func.count()).select_from(SignalDelivery).where(
            SignalDelivery.stream_id == stream_id,
            SignalDelivery.delivered_at.is_(None))) or 0)


def undelivered_outbox(flow: Flow, mission_id: str) -> list[int]:
    with flow.store.read() as session, session.begin():
        return [e.id for e in outbox.events_for_mission(session, mission_id)
                if e.delivered_at is None]


def test_a_fan_out_that_fails_midway_leaves_everything_to_do_again(
    flow: Flow, streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = streams.poll(RS)["stream_id"]
    second = streams.poll(AGENT)["stream_id"]
    grant = flow.grant()
    assert len(undelivered_outbox(flow, grant.mission_id)) == 2
    real = signal_rows.add_delivery
    calls = []

    def failing(session: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["stream_id"])
        if len(calls) == 3:  # the process dies after queueing some SETs, before the commit
            raise RuntimeError("crash")
        return real(session, **kwargs)

    monkeypatch.setattr(signal_rows, "add_delivery", failing)
    transmitter: SignalTransmitter = streams.transmitter
    with pytest.raises(RuntimeError):
        transmitter.fan_out()
    assert queued(flow, first) == queued(flow, second) == 0
    assert len(undelivered_outbox(flow, grant.mission_id)) == 2
    monkeypatch.setattr(signal_rows, "add_delivery", real)
    assert transmitter.fan_out() >= 2
    assert undelivered_outbox(flow, grant.mission_id) == []
    for auth, stream_id in ((RS, first), (AGENT, second)):
        assert [s for _, s, *_ in lifecycle(received(streams, auth, stream_id,
                                                     grant.mission_id))] == [
            "pending_approval", "active"]


def test_an_unreadable_outbox_event_is_delivered_to_nobody(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(AGENT)["stream_id"]
    grant = flow.grant()
    with flow.store.begin() as session:
        session.add(OutboxEvent(topic=outbox.LIFECYCLE_TOPIC, mission_id=grant.mission_id,
                                payload={"mission": "garbled"}, created_at=flow.now(),
                                delivered_at=None, attempts=0, next_attempt_at=flow.now()))
    change(flow, grant.mission_id, Event.SUSPEND)
    assert [s for _, s, *_ in lifecycle(received(streams, AGENT, stream_id,
                                                 grant.mission_id))] == [
        "pending_approval", "active", "suspended"]
    with flow.store.read() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(OutboxEvent).where(
            OutboxEvent.topic == outbox.LIFECYCLE_TOPIC,
            OutboxEvent.delivered_at.is_(None))) == 0


# -- bounded growth (decision E13) ---------------------------------------------------------


def test_a_stream_owing_too_many_sets_is_disabled_and_its_queue_dropped(
    flow: Flow, streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal_delivery, "MAX_OWED_PER_STREAM", 3)
    full = streams.poll(RS)["stream_id"]  # nobody polls it
    polled = streams.poll(RS)["stream_id"]
    grant = flow.grant()  # versions 1 and 2
    streams.drain()
    assert len(streams.polled(RS, polled)["sets"]) == 2
    streams.polled(RS, polled, ack=list(streams.polled(RS, polled)["sets"]), maxEvents=0)
    change(flow, grant.mission_id, Event.SUSPEND)  # version 3: the full stream owes 3
    streams.drain()
    status = flow.client.get("/ssf/status", params={"stream_id": full}, auth=RS).json()
    assert status["status"] == "enabled"
    change(flow, grant.mission_id, Event.RESUME)  # one more would be the fourth
    streams.drain()
    status = flow.client.get("/ssf/status", params={"stream_id": full}, auth=RS).json()
    assert status["status"] == "disabled" and "undelivered" in status["reason"]
    with flow.store.read() as session, session.begin():
        owed = session.scalars(select(SignalDelivery.id).where(
            SignalDelivery.stream_id == full, SignalDelivery.delivered_at.is_(None))).all()
    assert owed == []
    # The other stream, which keeps up, is untouched and got both changes.
    assert len(streams.polled(RS, polled)["sets"]) == 2


def test_delivered_outbox_events_are_purged_after_the_retention(
    flow: Flow, streams: Streams
) -> None:
    grant = flow.grant()
    streams.drain()
    with flow.store.read() as session, session.begin():
        events = outbox.events_for_mission(session, grant.mission_id)
    assert len(events) == 2 and all(e.delivered_at is not None for e in events)
    transmitter = streams.transmitter
    transmitter._last_purge = float("-inf")
    transmitter.run_once()
    with flow.store.read() as session, session.begin():
        assert len(outbox.events_for_mission(session, grant.mission_id)) == 2  # too recent
    flow.clock.advance(signal_delivery.DELIVERED_RETENTION.total_seconds() + 1)
    transmitter._last_purge = float("-inf")
    assert transmitter.run_once().purged >= 2
    with flow.store.read() as session, session.begin():
        assert outbox.events_for_mission(session, grant.mission_id) == []


def test_lifecycle_events_fan_out_in_id_order_whatever_the_writers_clock(
    flow: Flow, streams: Streams
) -> None:
    """A replica whose clock runs ahead writes an event "due" in the future; the next event,
    written by a replica with a right clock, must not be fanned out before it."""
    stream_id = streams.poll(RS)["stream_id"]
    grant = flow.grant()
    streams.drain()
    streams.polled(RS, stream_id, ack=list(streams.polled(RS, stream_id)["sets"]), maxEvents=0)
    change(flow, grant.mission_id, Event.SUSPEND)  # version 3
    change(flow, grant.mission_id, Event.RESUME)  # version 4
    with flow.store.begin() as session:
        first, second = outbox.events_for_mission(session, grant.mission_id)[-2:]
        assert first.delivered_at is None and second.delivered_at is None
        first.next_attempt_at = flow.now() + timedelta(minutes=5)  # written by a fast clock
    with flow.store.begin() as session:
        claimed = outbox.claim_due(session, now=flow.now(), topic=outbox.LIFECYCLE_TOPIC)
        assert [e.id for e in claimed][:2] == [first.id, second.id]
    sets = streams.polled(RS, stream_id)["sets"]
    assert [event_of(c)[1]["version"] for c in streams.claims(list(sets.values()))] == [3, 4]
