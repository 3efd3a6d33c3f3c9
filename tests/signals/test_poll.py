"""RFC 8936 poll: SETs handed out in order, up to ``maxEvents``, ``moreAvailable``, again
until acknowledged; ``setErrs`` recorded; ``returnImmediately: false`` waits (bounded) for
a SET; strict request validation."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select

from missionbound.issuer import signal_poll
from missionbound.mission.lifecycle import Event
from missionbound.store.models import SignalDelivery
from tests.issuer.flow import Flow
from tests.signals.conftest import Streams
from tests.signals.support import RS, event_of
from tests.signals.test_fan_out import change


def versions(streams: Streams, sets: dict[str, str]) -> list[int]:
    out = []
    for jti, claims in zip(sets, streams.claims(list(sets.values())), strict=True):
        assert claims["jti"] == jti
        out.append(event_of(claims)[1]["version"])
    return out


def test_poll_hands_out_in_order_until_acknowledged(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    grant = flow.grant()
    change(flow, grant.mission_id, Event.SUSPEND)
    change(flow, grant.mission_id, Event.RESUME)
    first = streams.polled(RS, stream_id, maxEvents=2)
    assert versions(streams, first["sets"]) == [1, 2] and first["moreAvailable"] is True
    # Not acknowledged: the same SETs again.
    again = streams.polled(RS, stream_id, maxEvents=2)
    assert list(again["sets"]) == list(first["sets"])
    second = streams.polled(RS, stream_id, maxEvents=2, ack=list(first["sets"]))
    assert versions(streams, second["sets"]) == [3, 4] and second["moreAvailable"] is False
    done = streams.polled(RS, stream_id, ack=list(second["sets"]))
    assert done == {"sets": {}, "moreAvailable": False}
    with flow.store.read() as session, session.begin():
        rows = session.scalars(select(SignalDelivery).where(
            SignalDelivery.stream_id == stream_id)).all()
    assert len(rows) == 4 and all(r.delivered_at is not None and r.last_error is None
                                  for r in rows)


def test_set_errors_are_recorded_and_not_handed_out_again(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    flow.grant()
    jtis = list(streams.polled(RS, stream_id)["sets"])
    assert len(jtis) == 2
    answer = streams.polled(RS, stream_id, ack=[jtis[1]], maxEvents=0, setErrs={
        jtis[0]: {"err": "invalid_key", "description": "unknown kid"}})
    assert answer == {"sets": {}, "moreAvailable": False}
    with flow.store.read() as session, session.begin():
        errors = dict(session.execute(select(SignalDelivery.jti, SignalDelivery.last_error)
                                      .where(SignalDelivery.stream_id == stream_id)).all())
    assert errors == {jtis[0]: "invalid_key: unknown kid", jtis[1]: None}
    assert streams.polled(RS, stream_id)["sets"] == {}


def test_acknowledging_another_streams_sets_changes_nothing(flow: Flow, streams: Streams) -> None:
    mine = streams.poll(RS)["stream_id"]
    other = streams.poll(RS)["stream_id"]
    flow.grant()
    jtis = list(streams.polled(RS, mine)["sets"])
    streams.polled(RS, other, ack=jtis, maxEvents=0)
    assert list(streams.polled(RS, mine)["sets"]) == jtis


def test_returning_later_waits_for_a_set(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    grant = flow.grant()
    streams.polled(RS, stream_id, ack=list(streams.polled(RS, stream_id)["sets"]))
    # The suspend commits after the poll started: getting its SET proves the poll waited.
    timer = threading.Timer(0.5, change, args=(flow, grant.mission_id, Event.SUSPEND))
    timer.start()
    try:
        answer = streams.polled(RS, stream_id, returnImmediately=False)
    finally:
        timer.join()
    assert versions(streams, answer["sets"]) == [3]


def test_returning_later_gives_up_after_a_bounded_wait(
    flow: Flow, streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal_poll, "LONG_POLL_SECONDS", 0.6)
    stream_id = streams.poll(RS)["stream_id"]
    # Nothing arrives: the poll ends by itself with an empty answer (not an error).
    answer = flow.client.post("/ssf/poll", params={"stream_id": stream_id}, json={}, auth=RS)
    assert answer.status_code == 200 and answer.json() == {"sets": {}, "moreAvailable": False}
    # An empty body is an empty request (every member is optional).
    empty = flow.client.post("/ssf/poll", params={"stream_id": stream_id}, auth=RS)
    assert empty.status_code == 200, empty.text


BAD_POLLS: list[tuple[str, Any]] = [
    ("not-an-object", [1]),
    ("negative-max", {"maxEvents": -1}),
    ("string-max", {"maxEvents": "5"}),
    ("boolean-max", {"maxEvents": True}),
    ("string-immediately", {"returnImmediately": "yes"}),
    ("ack-not-list", {"ack": "jti"}),
    ("ack-not-strings", {"ack": [1]}),
    ("ack-empty-string", {"ack": [""]}),
    ("errs-not-object", {"setErrs": []}),
    ("errs-without-err", {"setErrs": {"j": {"description": "x"}}}),
    ("errs-extra-member", {"setErrs": {"j": {"err": "x", "why": "y"}}}),
    ("unknown-member", {"maxEvents": 1, "wait": 5}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_POLLS], ids=[n for n, _ in BAD_POLLS])
def test_a_bad_poll_request_is_invalid_request(
    flow: Flow, streams: Streams, body: Any
) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    response = flow.client.post("/ssf/poll", params={"stream_id": stream_id}, json=body,
                                auth=RS)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


def test_poll_needs_a_poll_stream_of_the_caller(flow: Flow, streams: Streams) -> None:
    push = streams.push(RS, "https://rs.example/events")["stream_id"]
    refused = flow.client.post("/ssf/poll", params={"stream_id": push}, json={}, auth=RS)
    assert refused.status_code == 400 and "push" in refused.json()["error_description"]
    missing = flow.client.post("/ssf/poll", json={}, auth=RS)
    assert missing.status_code == 400
    unknown = flow.client.post("/ssf/poll", params={"stream_id": "ssf_unknown"}, json={},
                               auth=RS)
    assert unknown.status_code == 404
