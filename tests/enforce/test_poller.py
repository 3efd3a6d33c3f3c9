"""SignalPoller against a real, small RFC 8936 transmitter served by uvicorn on 127.0.0.1:
batches with moreAvailable, acknowledgements in the next request, errors in setErrs,
redelivery of what was not acknowledged, failures that keep pending acknowledgements."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from missionbound.enforce.signals import (
    MissionStateBook,
    Outcome,
    PollFailed,
    SignalPoller,
    SignalReceiver,
)
from missionbound.protocol.jwks import JwksCache
from tests.e2e_support import free_port
from tests.enforce.support import receiver_for, serving
from tests.protocol.secevents import (
    MISSION_ID,
    ManualClock,
    Transmitter,
    lifecycle_event,
    serving_jwks,
)

T = Transmitter()
CLIENT = ("demo-rs", "demo-rs-secret")
STATES = ["pending_approval", "active", "suspended", "active", "suspended", "active",
          "revoked"]


@dataclass
class PollTransmitter:
    """RFC 8936 section 2.4 as a transmitter does it: acknowledgements and errors first, then
    up to maxEvents of what is still owed (unacknowledged SETs are handed out again)."""

    owed: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    answer: Any = None  # when set, answered instead of a poll response
    lock: threading.Lock = field(default_factory=threading.Lock)

    def queue(self, token: str, jti: str) -> None:
        with self.lock:
            self.owed[jti] = token

    async def poll(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(":".join(CLIENT).encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"err": "authentication_failed", "description": "who?"}, 401)
        body = await request.json()
        with self.lock:
            self.requests.append(body)
            if self.answer is not None:
                return Response(self.answer, media_type="application/json")
            for jti in body.get("ack", []):
                self.owed.pop(jti, None)
            for jti, error in body.get("setErrs", {}).items():
                self.errors[jti] = error
                self.owed.pop(jti, None)
            wanted = body.get("maxEvents", 100)
            batch = dict(list(self.owed.items())[:wanted])
            return JSONResponse({"sets": batch, "moreAvailable": len(self.owed) > wanted})


@pytest.fixture
def transmitter() -> Iterator[tuple[PollTransmitter, str]]:
    state = PollTransmitter()
    app = Starlette(routes=[Route("/ssf/poll", state.poll, methods=["POST"])])
    with serving(app) as url:
        yield state, f"{url}/ssf/poll?stream_id=s1"


def poller_for(receiver: SignalReceiver, url: str) -> SignalPoller:
    return SignalPoller(receiver, poll_url=url, auth=httpx.BasicAuth(*CLIENT))


def queue_transitions(state: PollTransmitter, count: int = len(STATES)) -> list[str]:
    jtis = []
    for version, name in enumerate(STATES[:count], start=1):
        jti = f"jti-{version}"
        state.queue(T.sign(lifecycle_event(name, version), jti=jti), jti)
        jtis.append(jti)
    return jtis


def test_batches_are_drained_and_acknowledged_in_the_next_request(
    transmitter: tuple[PollTransmitter, str],
) -> None:
    state, url = transmitter
    jtis = queue_transitions(state)
    book = MissionStateBook()
    with poller_for(receiver_for(T, book=book), url) as poller:
        taken = poller.poll_once(max_events=3)
        while poller.more_available:
            taken += poller.poll_once(max_events=3)
        assert [t.jti for t in taken] == jtis
        assert all(t.outcome is Outcome.APPLIED for t in taken)
        assert poller.pending_acks == ("jti-7",)
        poller.flush_acks()
        assert not poller.pending_acks
    assert [r["ack"] for r in state.requests] == [[], jtis[:3], jtis[3:6], ["jti-7"]]
    assert [r["maxEvents"] for r in state.requests] == [3, 3, 3, 0]
    assert all(r["returnImmediately"] is True and r["setErrs"] == {} for r in state.requests)
    assert set(state.requests[0]) == {"maxEvents", "returnImmediately", "ack", "setErrs"}
    assert state.owed == {}
    held = book.get(MISSION_ID)
    assert held is not None and (held.state, held.version) == ("revoked", 7)


def test_an_empty_poll_and_an_empty_flush(transmitter: tuple[PollTransmitter, str]) -> None:
    state, url = transmitter
    with poller_for(receiver_for(T), url) as poller:
        assert poller.poll_once() == [] and not poller.more_available
        poller.flush_acks()  # nothing pending: no request
    assert len(state.requests) == 1


def test_refused_sets_are_reported_in_set_errs(transmitter: tuple[PollTransmitter, str]) -> None:
    state, url = transmitter
    state.queue(T.sign(lifecycle_event("active", 2), jti="good"), "good")
    state.queue(T.sign(aud="another-rs", jti="misaddressed"), "misaddressed")
    state.queue(Transmitter(kid=T.kid).sign(jti="forged"), "forged")
    state.queue(12345, "not-a-string")  # type: ignore[arg-type]
    with poller_for(receiver_for(T), url) as poller:
        taken = poller.poll_once()
        assert [t.jti for t in taken] == ["good"]
        assert poller.pending_acks == ("good",)
        assert {jti: e["err"] for jti, e in poller.pending_errors.items()} == {
            "misaddressed": "invalid_audience", "forged": "authentication_failed",
            "not-a-string": "invalid_request"}
        poller.flush_acks()
    assert state.requests[-1]["ack"] == ["good"]
    assert state.errors["misaddressed"]["err"] == "invalid_audience"
    assert set(state.errors["forged"]) == {"err", "description"}
    assert state.owed == {}


def test_duplicates_and_stale_sets_are_acknowledged(
    transmitter: tuple[PollTransmitter, str],
) -> None:
    state, url = transmitter
    token = T.sign(lifecycle_event("revoked", 5), jti="r5")
    state.queue(token, "r5")
    book = MissionStateBook()
    with poller_for(receiver_for(T, book=book), url) as poller:
        poller.poll_once()
        poller.flush_acks()
        state.queue(token, "r5")  # delivered again (as after a transmitter's crash)
        state.queue(T.sign(lifecycle_event("active", 4), jti="a4"), "a4")
        again = poller.poll_once()
        assert [(t.jti, t.outcome) for t in again] == [("r5", Outcome.DUPLICATE),
                                                         ("a4", Outcome.STALE)]
        poller.flush_acks()
    assert state.owed == {}
    assert not book.is_active(MISSION_ID)


def test_sets_whose_keys_are_unavailable_are_not_acknowledged_and_come_again(
    transmitter: tuple[PollTransmitter, str],
) -> None:
    state, url = transmitter
    queue_transitions(state, 2)
    clock = ManualClock()
    with serving_jwks(T) as jwks, JwksCache(jwks.url, clock=clock) as keys:
        jwks.status = 503
        with poller_for(receiver_for(T, keys=keys), url) as poller:
            assert poller.poll_once() == []
            assert poller.pending_acks == () and poller.pending_errors == {}
            jwks.status = 200
            clock.advance(30)
            taken = poller.poll_once()  # handed out again
            assert [t.jti for t in taken] == ["jti-1", "jti-2"]


def test_a_refused_poll_keeps_the_pending_acknowledgements(
    transmitter: tuple[PollTransmitter, str],
) -> None:
    state, url = transmitter
    queue_transitions(state, 2)
    with poller_for(receiver_for(T), url) as poller:
        poller.poll_once()
        poller.auth = httpx.BasicAuth("demo-rs", "wrong")
        with pytest.raises(PollFailed) as caught:
            poller.poll_once()
        assert caught.value.status == 401 and caught.value.err == "authentication_failed"
        assert poller.pending_acks == ("jti-1", "jti-2")
        poller.auth = httpx.BasicAuth(*CLIENT)
        poller.flush_acks()
    assert state.owed == {}


@pytest.mark.parametrize("answer", [b"not json", b"[]", b'{"sets": []}',
                                    b'{"sets": {}, "moreAvailable": "yes"}'])
def test_an_answer_that_is_not_a_poll_response_fails(
    transmitter: tuple[PollTransmitter, str], answer: bytes
) -> None:
    state, url = transmitter
    state.answer = answer
    with poller_for(receiver_for(T), url) as poller, pytest.raises(PollFailed):
        poller.poll_once()


def test_no_transmitter_listening_is_a_poll_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}/ssf/poll"
    with poller_for(receiver_for(T), url) as poller, pytest.raises(PollFailed, match="no answer"):
        poller.poll_once()


def test_arguments_are_checked(transmitter: tuple[PollTransmitter, str]) -> None:
    _, url = transmitter
    with pytest.raises(ValueError):
        SignalPoller(receiver_for(T), poll_url="ftp://as.example/poll")
    with poller_for(receiver_for(T), url) as poller:
        for bad in (0, 1001):
            with pytest.raises(ValueError):
                poller.poll_once(max_events=bad)


def test_a_caller_supplied_client_is_used_and_left_open(
    transmitter: tuple[PollTransmitter, str],
) -> None:
    state, url = transmitter
    queue_transitions(state, 1)
    with httpx.Client(auth=httpx.BasicAuth(*CLIENT)) as client:
        poller = SignalPoller(receiver_for(T), poll_url=url, client=client)
        assert [t.jti for t in poller.poll_once()] == ["jti-1"]
        poller.close()
        assert not client.is_closed
