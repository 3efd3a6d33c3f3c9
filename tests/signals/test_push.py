"""RFC 8935 push to a real receiver (an HTTP server on 127.0.0.1): signed SETs in order, 202
marks them delivered, failures back the stream off (1 s doubling, capped) with later SETs
waiting behind, an RFC 8935 400 is recorded and not retried, a paused stream holds, a lease
keeps other dispatchers off a stream, and a crash between the answer and its record sends
the SET again (at least once)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from missionbound.issuer.signal_delivery import LEASE_FACTOR, SignalTransmitter
from missionbound.mission.lifecycle import Event
from missionbound.store import signals as signal_rows
from missionbound.store.models import SignalDelivery, SignalStream
from tests.e2e_support import free_port
from tests.issuer.flow import Flow
from tests.signals.conftest import Streams
from tests.signals.support import RS, Receiver, event_of, running_receiver
from tests.signals.test_fan_out import change


@pytest.fixture
def receiver() -> Any:
    with running_receiver() as running:
        yield running


def states(streams: Streams, tokens: list[str], mission_id: str) -> list[tuple[str, int]]:
    out = []
    for claims in streams.claims(tokens):
        if claims["sub_id"]["id"] == mission_id:
            _, body = event_of(claims)
            out.append((body["state"], body["version"]))
    return out


def stream_row(flow: Flow, stream_id: str) -> SignalStream:
    with flow.store.read() as session, session.begin():
        row = session.get(SignalStream, stream_id)
        assert row is not None
        return row


def deliveries(flow: Flow, stream_id: str) -> list[SignalDelivery]:
    with flow.store.read() as session, session.begin():
        return list(session.scalars(select(SignalDelivery).where(
            SignalDelivery.stream_id == stream_id).order_by(SignalDelivery.id)))


def test_push_delivers_signed_sets_in_order(
    flow: Flow, streams: Streams, receiver: Receiver
) -> None:
    stream_id = streams.create(RS, {"method": "urn:ietf:rfc:8935", "endpoint_url": receiver.url,
                                    "authorization_header": "Bearer rs-inbox-token"})["stream_id"]
    grant = flow.grant()
    change(flow, grant.mission_id, Event.SUSPEND)
    report = streams.transmitter.run_once()
    assert report.accepted == 3 and report.failed == 0
    assert states(streams, receiver.tokens(), grant.mission_id) == [
        ("pending_approval", 1), ("active", 2), ("suspended", 3)]
    assert {p.content_type for p in receiver.received} == {"application/secevent+jwt"}
    assert {p.authorization for p in receiver.received} == {"Bearer rs-inbox-token"}
    assert all(d.delivered_at is not None and d.attempts == 1 and d.last_error is None
               for d in deliveries(flow, stream_id))
    assert stream_row(flow, stream_id).next_attempt_at is None  # released, healthy
    # Nothing is sent twice.
    assert streams.transmitter.run_once().accepted == 0
    assert len(receiver.received) == 3


def test_a_failing_receiver_backs_the_stream_off_and_keeps_the_order(
    flow: Flow, streams: Streams, receiver: Receiver
) -> None:
    stream_id = streams.push(RS, receiver.url)["stream_id"]
    receiver.answer_next((500, None), (503, None))
    grant = flow.grant()
    transmitter = streams.transmitter
    first = transmitter.run_once()
    assert (first.accepted, first.failed) == (0, 1)
    row = stream_row(flow, stream_id)
    assert row.attempts == 1 and row.last_error == "HTTP 500"
    assert row.next_attempt_at is not None
    assert timedelta(seconds=0.5) < row.next_attempt_at - flow.now() <= timedelta(seconds=1)
    # Backing off: nothing is sent, not even the second SET (it waits behind the first).
    assert transmitter.run_once().failed == 0 and len(receiver.received) == 1
    flow.clock.advance(1.0)
    assert transmitter.run_once().failed == 1  # 503: now 2 s
    row = stream_row(flow, stream_id)
    assert row.attempts == 2
    assert timedelta(seconds=1.5) < row.next_attempt_at - flow.now() <= timedelta(seconds=2)
    flow.clock.advance(2.0)
    assert transmitter.run_once().accepted == 2
    assert [p.status for p in receiver.received] == [500, 503, 202, 202]
    assert states(streams, receiver.tokens(None), grant.mission_id) == [
        ("pending_approval", 1), ("pending_approval", 1), ("pending_approval", 1),
        ("active", 2)]
    # The same SET each time (one jti), signed again at each attempt.
    assert len({c["jti"] for c in streams.claims(receiver.tokens(None)[:3])}) == 1
    row = stream_row(flow, stream_id)
    assert row.attempts == 0 and row.next_attempt_at is None
    first_delivery = deliveries(flow, stream_id)[0]
    assert first_delivery.attempts == 3 and first_delivery.delivered_at is not None


def test_backoff_doubles_up_to_the_maximum_for_an_unreachable_receiver(
    flow: Flow, streams: Streams
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/events"  # nothing listens there
    stream_id = streams.push(RS, dead)["stream_id"]
    flow.grant()
    transmitter = SignalTransmitter(flow.issuer, push_timeout_seconds=2,
                                    max_backoff_seconds=3)
    try:
        waits = []
        for _ in range(4):
            assert transmitter.run_once().failed == 1
            row = stream_row(flow, stream_id)
            assert row.last_error is not None and row.last_error.startswith("no answer")
            assert row.next_attempt_at is not None
            wait = (row.next_attempt_at - flow.now()).total_seconds()
            waits.append(round(wait))
            flow.clock.advance(wait)
        assert waits == [1, 2, 3, 3]
    finally:
        transmitter.close()


def test_an_rfc8935_rejection_is_recorded_and_not_retried(
    flow: Flow, streams: Streams, receiver: Receiver
) -> None:
    stream_id = streams.push(RS, receiver.url)["stream_id"]
    receiver.answer_next((400, {"err": "invalid_audience", "description": "not for me"}))
    grant = flow.grant()
    report = streams.transmitter.run_once()
    assert (report.rejected, report.accepted, report.failed) == (1, 1, 0)
    assert [p.status for p in receiver.received] == [400, 202]
    assert states(streams, receiver.tokens(None), grant.mission_id) == [
        ("pending_approval", 1), ("active", 2)]
    rejected, accepted = deliveries(flow, stream_id)
    assert rejected.delivered_at is not None
    assert rejected.last_error == "invalid_audience: not for me"
    assert accepted.last_error is None
    assert stream_row(flow, stream_id).last_error == "invalid_audience: not for me"
    flow.clock.advance(600)
    assert streams.transmitter.run_once().rejected == 0
    assert len(receiver.received) == 2


def test_a_400_without_an_rfc8935_error_is_retried(
    flow: Flow, streams: Streams, receiver: Receiver
) -> None:
    stream_id = streams.push(RS, receiver.url)["stream_id"]
    receiver.answer_next((400, {"message": "bad"}))
    flow.grant()
    assert streams.transmitter.run_once().failed == 1
    assert stream_row(flow, stream_id).last_error == "HTTP 400 without an RFC 8935 error body"
    flow.clock.advance(1)
    assert streams.transmitter.run_once().accepted == 2


def test_a_paused_push_stream_holds_its_sets_until_enabled(
    flow: Flow, streams: Streams, receiver: Receiver
) -> None:
    stream_id = streams.push(RS, receiver.url)["stream_id"]
    flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": "paused"}, auth=RS)
    grant = flow.grant()
    assert streams.transmitter.run_once().accepted == 0 and receiver.received == []
    flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": "enabled"}, auth=RS)
    assert streams.transmitter.run_once().accepted == 2
    assert states(streams, receiver.tokens(), grant.mission_id) == [
        ("pending_approval", 1), ("active", 2)]


def test_a_leased_stream_is_left_to_its_dispatcher_until_the_lease_lapses(
    flow: Flow, streams: Streams, receiver: Receiver
) -> None:
    stream_id = streams.push(RS, receiver.url)["stream_id"]
    flow.grant()
    transmitter = streams.transmitter
    transmitter.fan_out()
    # Another dispatcher claimed the stream (and, say, died).
    now = flow.now()
    with flow.store.begin() as session:
        (claim,) = [c for c in signal_rows.claim_push_streams(
            session, now=now, lease_until=now + transmitter.lease, limit=100,
            push_clients=[RS[0]])
            if c.stream_id == stream_id]
    assert transmitter.run_once().accepted == 0 and receiver.received == []
    flow.clock.advance(transmitter.lease.total_seconds())
    assert transmitter.run_once().accepted == 2
    # The old claim is fenced off: it can record nothing about the stream any more.
    with flow.store.begin() as session:
        assert signal_rows.renew_lease(session, claim, lease_until=flow.now()) is None
        assert signal_rows.release_push_stream(session, claim) is False
        assert signal_rows.record_push_failure(
            session, claim, 0, now=flow.now(), error="x",
            max_backoff=timedelta(seconds=5)) is None
    assert stream_row(flow, stream_id).attempts == 0
    assert transmitter.lease == timedelta(
        seconds=flow.issuer.settings.signals_push_timeout_seconds * LEASE_FACTOR)


def test_a_crash_after_the_receiver_answered_sends_the_set_again(
    flow: Flow, streams: Streams, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream_id = streams.push(RS, receiver.url)["stream_id"]
    grant = flow.grant()
    real = signal_rows.mark_sent

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the process died before recording the answer")

    monkeypatch.setattr(signal_rows, "mark_sent", crash)
    transmitter = streams.transmitter
    transmitter.run_once()
    assert len(receiver.received) == 1  # received, but not recorded as delivered
    assert all(d.delivered_at is None for d in deliveries(flow, stream_id))
    monkeypatch.setattr(signal_rows, "mark_sent", real)
    assert transmitter.run_once().accepted == 0  # the dead dispatcher's lease holds
    flow.clock.advance(transmitter.lease.total_seconds())
    assert transmitter.run_once().accepted == 2
    tokens = receiver.tokens()
    first, again, _ = streams.claims(tokens)
    assert first["jti"] == again["jti"]  # the same SET again: at least once
    assert states(streams, tokens, grant.mission_id) == [
        ("pending_approval", 1), ("pending_approval", 1), ("active", 2)]


def test_a_client_no_longer_configured_is_not_pushed_to(
    flow: Flow, streams: Streams, receiver: Receiver
) -> None:
    """Decision E12: push is for clients the operator configures. A stream whose client
    was removed from the tenant keeps its queue, but the AS sends it nothing."""
    stream_id = streams.push(RS, receiver.url)["stream_id"]
    flow.grant()
    transmitter = streams.transmitter
    transmitter.fan_out()
    now = flow.now()
    with flow.store.begin() as session:
        claims = signal_rows.claim_push_streams(
            session, now=now, lease_until=now + transmitter.lease, limit=100,
            push_clients=["demo-agent"])
    assert [c for c in claims if c.stream_id == stream_id] == []
    assert receiver.received == []
    assert transmitter.run_once().accepted == 2  # still configured: delivered as before
