"""The proof of issue 4, "Events": an SSF receiver (push and poll, built on
``missionbound.enforce.signals``) receives every transition of a Mission in order, including
after the transmitter (a real ``missionbound serve`` process) is killed with SIGKILL while a
push is in flight and started again on the same database.

1. A push receiver (the library's push endpoint behind a gate that records each SET and can
   hold a request) runs under uvicorn on 127.0.0.1; ``demo-rs`` creates a push stream to it
   and a poll stream.
2. A Mission is pushed, approved and redeemed over HTTP (PAR -> sign-in -> consent -> token):
   ``pending_approval`` (1) and ``active`` (2) reach both receivers.
3. The gate holds the next push; the Mission is suspended (3); once that push is in flight,
   the server is killed (SIGKILL). The held push is then answered 503 without reaching the
   receiver: the receiver never saw version 3.
4. While no server runs, the Mission is resumed (4): committed with its outbox event only.
5. A new server starts on the same database; the Mission is revoked (5).
6. Both receivers end at ``revoked`` version 5, having seen 1, 2, 3, 4, 5 in that order
   (a SET sent again after the crash is allowed, applied by version); every SET verifies
   against the AS's ``/jwks``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import uvicorn

from examples.preview_mission import demo_intent
from missionbound.enforce.signals import (
    LIFECYCLE_CHANGE,
    MissionStateBook,
    ReceivedSet,
    SignalPoller,
    SignalReceiver,
)
from missionbound.mission.lifecycle import Event, Role
from missionbound.protocol.jwks import StaticKeys
from missionbound.store.engine import create_engine_for
from missionbound.store.lifecycle import transition
from missionbound.store.transactions import Store
from tests.e2e.test_issuance_e2e import follow, pkce_pair
from tests.e2e_support import ServerHandle, free_port, parse_form, running_server
from tests.signals.support import decode_set, event_of

AGENT = ("demo-agent", "demo-agent-secret")
RS = ("demo-rs", "demo-rs-secret")
REDIRECT_URI = "http://127.0.0.1:8765/callback"
INBOX_AUTHORIZATION = "Bearer e2e-inbox-" + secrets.token_urlsafe(8)
# Fast rounds, a short push timeout (so the dead server's lease lapses in 4 s) and backoff.
SERVER_ENV = {
    "MISSIONBOUND_SIGNALS_DELIVERY_SECONDS": "0.2",
    "MISSIONBOUND_SIGNALS_PUSH_TIMEOUT_SECONDS": "1",
    "MISSIONBOUND_SIGNALS_MAX_BACKOFF_SECONDS": "2",
    "MISSIONBOUND_EXPIRY_SWEEP_SECONDS": "0",
}
WAIT_SECONDS = 45.0


# -- the push receiver -------------------------------------------------------------------


class Gate:
    """ASGI middleware in front of the receiver's push endpoint. Records each SET it passes
    on (in arrival order, with the answer), and while ``holding`` is set, holds requests
    until ``release`` is set and then answers 503 without passing them on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.passed: list[tuple[str, int]] = []
        self.holding = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if self.holding.is_set():
            self.held.set()
            await asyncio.to_thread(self.release.wait, 30)
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        status: list[int] = []
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # nothing more will come
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.inner(scope, replay, recording_send)
        self.passed.append((body.decode("ascii", "replace"), status[0] if status else 0))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port, in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the receiver did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- the AS, driven as its clients and operators do ------------------------------------


def approve_mission(server: ServerHandle, issuer: str) -> str:
    """PAR -> /authorize -> sign in as bob -> consent -> code -> token; the mission_id."""
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=10) as http:
        verifier, challenge = pkce_pair()
        par = http.post("/par", auth=AGENT, data={
            "response_type": "code", "client_id": AGENT[0], "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge, "code_challenge_method": "S256",
            "state": secrets.token_urlsafe(8), "login_hint": "alice",
            "mission_intent": demo_intent(issuer, datetime.now(UTC)),
        })
        assert par.status_code == 201, par.text
        authorize = http.get("/authorize", params={"client_id": AGENT[0],
                                                   "request_uri": par.json()["request_uri"]})
        login = http.get(follow(http, authorize))
        action, _, hidden = parse_form(login.text)
        signed_in = http.post(action, data={**hidden, "username": "bob", "password": "bob"})
        consent = http.get(follow(http, signed_in))
        action, _, hidden = parse_form(consent.text)
        approved = http.post(action, data={**hidden, "decision": "approve"})
        code = parse_qs(urlsplit(follow(http, approved)).query)["code"][0]
        token = http.post("/token", auth=AGENT, data={
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
        assert token.status_code == 200, token.text
        return str(token.json()["mission_id"])


def change_in_store(database_url: str, mission_id: str, event: Event) -> None:
    """An administrator's lifecycle change, committed to the database the servers use (with
    its history row, audit record and outbox event), whether or not a server runs."""
    engine = create_engine_for(database_url)
    try:
        with Store(engine).begin() as session:
            result = transition(session, mission_id, event, roles={Role.ADMIN},
                                actor={"role": "admin", "sub": "bob"}, reason=f"e2e {event}",
                                now=datetime.now(UTC))
        assert result.decision.changed
    finally:
        engine.dispose()


def create_stream(server: ServerHandle, delivery: dict[str, Any]) -> str:
    response = httpx.post(f"{server.base_url}/ssf/streams", auth=RS, timeout=10, json={
        "delivery": delivery, "events_requested": [LIFECYCLE_CHANGE]})
    assert response.status_code == 201, response.text
    return str(response.json()["stream_id"])


def wait_until(condition: Any, what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def at_version(book: MissionStateBook, mission_id: str, version: int) -> bool:
    state = book.get(mission_id)
    return state is not None and state.version >= version


def poll_until(poller: SignalPoller, taken: list[ReceivedSet], mission_id: str, version: int
               ) -> None:
    """Poll (each answer acknowledged with the next request) until the poller's book holds
    ``version``; what it took is added to ``taken``, in order."""
    def reached() -> bool:
        taken.extend(poller.poll_once(max_events=10))
        return at_version(poller.receiver.book, mission_id, version)

    wait_until(reached, f"the poll receiver to reach version {version}")


def first_arrivals(jwks: dict[str, Any], tokens: list[str], mission_id: str
                   ) -> list[tuple[str, int]]:
    """(state, version) of the Mission's lifecycle SETs in the order each ``jti`` first
    arrived: a SET given again (a push the dead server never saw answered, a poll the poller
    had not acknowledged yet) is a duplicate, applied by version and changing nothing."""
    seen: set[str] = set()
    out = []
    for token in tokens:
        header, claims = decode_set(jwks, token)
        assert header["typ"] == "secevent+jwt"
        event_type, body = event_of(claims)
        if event_type != LIFECYCLE_CHANGE or body["mission"]["id"] != mission_id:
            continue
        if claims["jti"] not in seen:
            seen.add(claims["jti"])
            out.append((body["state"], body["version"]))
    return out


def first_arrivals_polled(taken: list[ReceivedSet], mission_id: str
                          ) -> list[tuple[str, int]]:
    """The same for what the poller took (verified by the library against the AS's keys)."""
    seen: set[str] = set()
    out = []
    for item in taken:
        if item.state is None or item.state.mission_id != mission_id or item.jti in seen:
            continue
        seen.add(item.jti)
        out.append((item.state.state, item.state.version))
    return out


EXPECTED = [("pending_approval", 1), ("active", 2), ("suspended", 3), ("active", 4),
            ("revoked", 5)]


def test_a_receiver_gets_every_transition_in_order_across_a_transmitter_crash(
    tmp_path: Path, empty_database_url: str
) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"  # stable across the restart
    data_dir = tmp_path / "data"
    push_book, poll_book = MissionStateBook(), MissionStateBook()
    polled: list[ReceivedSet] = []

    with running_server(tmp_path, database_url=empty_database_url, issuer=issuer,
                        data_dir=data_dir, env=SERVER_ENV) as first:
        jwks = httpx.get(f"{first.base_url}/jwks", timeout=10).json()
        push_receiver = SignalReceiver(issuer=issuer, audience=RS[0], keys=StaticKeys(jwks),
                                       book=push_book)
        poll_receiver = SignalReceiver(issuer=issuer, audience=RS[0], keys=StaticKeys(jwks),
                                       book=poll_book)
        gate = Gate(push_receiver.push_endpoint(authorization=INBOX_AUTHORIZATION))
        with serving(gate) as receiver_url:
            create_stream(first, {"method": "urn:ietf:rfc:8935",
                                  "endpoint_url": f"{receiver_url}/ssf/events",
                                  "authorization_header": INBOX_AUTHORIZATION})
            poll_stream = create_stream(first, {"method": "urn:ietf:rfc:8936"})

            # 2. Submission and activation reach both receivers.
            mission_id = approve_mission(first, issuer)
            wait_until(lambda: at_version(push_book, mission_id, 2), "push: active")
            poller = SignalPoller(poll_receiver, auth=httpx.BasicAuth(*RS),
                                  poll_url=f"{first.base_url}/ssf/poll?stream_id={poll_stream}")
            poll_until(poller, polled, mission_id, 2)

            # 3. Suspend; kill the transmitter while that push is in flight.
            gate.holding.set()
            change_in_store(first.database_url, mission_id, Event.SUSPEND)
            assert gate.held.wait(WAIT_SECONDS), "the suspension was never pushed"
            first.process.kill()
            assert first.process.wait(timeout=10) == -9
            gate.holding.clear()
            gate.release.set()  # answered 503: the receiver never saw version 3
            push_state = push_book.get(mission_id)
            assert push_state is not None and push_state.version == 2

            # 4. Resumed while no transmitter runs: only the outbox knows.
            change_in_store(first.database_url, mission_id, Event.RESUME)

            # 5. A new transmitter on the same database; then the revocation.
            with running_server(tmp_path, database_url=empty_database_url, issuer=issuer,
                                data_dir=data_dir, env=SERVER_ENV) as second:
                assert httpx.get(f"{second.base_url}/jwks", timeout=10).json() == jwks
                change_in_store(second.database_url, mission_id, Event.REVOKE)
                wait_until(lambda: at_version(push_book, mission_id, 5), "push: revoked")
                poller = SignalPoller(
                    poll_receiver, auth=httpx.BasicAuth(*RS),
                    poll_url=f"{second.base_url}/ssf/poll?stream_id={poll_stream}")
                poll_until(poller, polled, mission_id, 5)
                _, log = second.output()

    # 6. Both ended at revoked 5 and saw every transition, in order.
    for book in (push_book, poll_book):
        final = book.get(mission_id)
        assert final is not None and (final.state, final.version) == ("revoked", 5)
        assert not book.is_active(mission_id)
    pushed = [token for token, status in gate.passed if status == 202]
    assert len(pushed) == len(gate.passed), gate.passed  # every SET it was given verified
    assert first_arrivals(jwks, pushed, mission_id) == EXPECTED
    assert first_arrivals_polled(polled, mission_id) == EXPECTED
    statuses = [entry["status"] for entry in map(json.loads, filter(str.strip, log.splitlines()))
                if entry.get("event") == "request"]
    assert statuses and all(status < 500 for status in statuses)

