"""Three replicas on one PostgreSQL (issue 4, "Proof"; DESIGN.md "Scale-out";
docs/scale-out.md): real ``missionbound serve`` processes A, B and C on one fresh database,
sharing everything through it (signing keys, server secrets, Missions, tokens).

A Mission is approved and its tokens issued through A; B and C introspect its access token
(active: their Mission caches are now warm). The Mission is revoked through A's
``/mission/lifecycle`` (bob's browser session). Then B and C refuse the refresh token at
once (``invalid_grant``, ``mission_state: revoked``: the derivation gate reads the locked
row, never a cache) and their introspection says ``active: false`` with the Mission
``revoked``.

How long B's cached state lags is measured, not asserted: B and C are polled in a tight
loop from before the revoke, each answer timestamped. The numbers are printed and written to
``tests/artifacts/replica-revocation.json``; the test asserts only that both converge (within
a bounded wait) and never answer ``active`` again. The repeated measurement (p50/p95 over
many revocations) is ``bench/replica_suites.py``.

PostgreSQL only: skipped, saying why, when no PostgreSQL answers (tests/conftest.py).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import Key, KeySet
from sqlalchemy import text
from sqlalchemy.engine import make_url

from examples.preview_mission import demo_intent
from missionbound.store.engine import create_engine_for
from tests.conftest import postgres_problem, postgres_url
from tests.e2e.test_issuance_e2e import (
    CLIENT,
    HTTP_TIMEOUT,
    REDIRECT_URI,
    dpop_post,
    follow,
    introspect,
    pkce_pair,
)
from tests.e2e_support import ServerHandle, parse_form, running_server
from tests.protocol.proofs import generate_key

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CONVERGE_TIMEOUT = 5.0  # a bound on the wait, never a time budget
AFTER_REVOKED = 20  # answers still polled once revoked: none may say active


@pytest.fixture
def shared_database() -> Iterator[str]:
    """A new, uniquely named PostgreSQL database (NOTIFY channels are per database, so no
    other test run can speak on ours), dropped afterwards."""
    problem = postgres_problem()
    if problem is not None:
        kind, reason = problem
        if kind == "skip":
            pytest.skip(reason)
        pytest.fail(reason)
    name = "mb_replicas_" + secrets.token_hex(6)
    admin = create_engine_for(postgres_url(), isolation_level="AUTOCOMMIT", pool_size=1,
                              max_overflow=0)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def replicas(tmp_path: Path, shared_database: str) -> Iterator[dict[str, ServerHandle]]:
    """A, B and C: one issuer identifier (A's address, as a load balancer's name would be),
    one database. Started one after the other (concurrent starts are covered by
    tests/store/test_migrations.py)."""
    with running_server(tmp_path, database_url=shared_database) as a, \
            running_server(tmp_path, database_url=shared_database, issuer=a.base_url) as b, \
            running_server(tmp_path, database_url=shared_database, issuer=a.base_url) as c:
        yield {"A": a, "B": b, "C": c}


def client_for(server: ServerHandle) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=HTTP_TIMEOUT)


@dataclass
class Granted:
    mission_id: str
    access_token: str
    refresh_token: str
    key: Key
    csrf_token: str  # bob's browser session on A


def grant_through(http: httpx.Client, issuer: str) -> Granted:
    """The issuance flow of tests/e2e/test_issuance_e2e.py against one replica: PAR with
    DPoP, sign-in as bob (approver for alice, and an administrator), consent, code -> a
    DPoP-bound access token and refresh token."""
    key = generate_key("ES256")
    verifier, challenge = pkce_pair()
    par = dpop_post(http, issuer, "/par", key, {
        "response_type": "code", "client_id": CLIENT[0], "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": "replicas",
        "mission_intent": demo_intent(issuer, datetime.now(UTC)), "login_hint": "alice",
        "dpop_jkt": key.thumbprint(),
    }, CLIENT)
    assert par.status_code == 201, par.text
    authorize = http.get("/authorize", params={"client_id": CLIENT[0],
                                               "request_uri": par.json()["request_uri"]})
    login_page = http.get(follow(http, authorize))
    action, _, hidden = parse_form(login_page.text)
    signed_in = http.post(action, data={**hidden, "username": "bob", "password": "bob"})
    consent_page = http.get(follow(http, signed_in))
    assert consent_page.status_code == 200, consent_page.text[:500]
    action, _, hidden = parse_form(consent_page.text)
    approved = http.post(action, data={**hidden, "decision": "approve"})
    query = parse_qs(urlsplit(follow(http, approved)).query)
    token = dpop_post(http, issuer, "/token", key, {
        "grant_type": "authorization_code", "code": query["code"][0],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    }, CLIENT)
    assert token.status_code == 200, token.text
    body = token.json()
    return Granted(body["mission_id"], body["access_token"], body["refresh_token"], key,
                   hidden["csrf_token"])


@dataclass
class Poller:
    """Introspects one token at one replica in a tight loop, timestamping every answer
    (``time.perf_counter`` at send and at receipt) and its state."""

    server: ServerHandle
    token: str
    answers: list[tuple[float, float, bool, str | None]] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            with client_for(self.server) as http:
                deadline = None
                while not self._stop.is_set():
                    sent = time.perf_counter()
                    body = introspect(http, self.token)
                    received = time.perf_counter()
                    state = body.get("mission", {}).get("state")
                    self.answers.append((sent, received, body["active"] is True, state))
                    if body["active"] is False and deadline is None:
                        deadline = len(self.answers) + AFTER_REVOKED
                    if deadline is not None and len(self.answers) >= deadline:
                        return
                    if self.answers and received - self.answers[0][0] > 60:
                        return  # bounded, whatever happens
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self._stop.set()


def lag(answers: list[tuple[float, float, bool, str | None]], acknowledged: float,
        timeout: float) -> dict[str, Any]:
    """What one replica answered around the revoke that A acknowledged at ``acknowledged``:
    the last ``active`` answer to a request sent after the acknowledgement (the lag a
    client could observe) and the first ``revoked`` answer (an upper bound of the lag)."""
    first_revoked = next((a for a in answers if not a[2]), None)
    assert first_revoked is not None, f"never answered inactive within {timeout} s"
    index = answers.index(first_revoked)
    assert all(not a[2] for a in answers[index:]), "answered active again after revoked"
    assert {a[3] for a in answers[index:]} == {"revoked"}
    stale = [a for a in answers[:index] if a[0] > acknowledged]
    return {
        "first_revoked_received_after_ack_ms": round((first_revoked[1] - acknowledged) * 1e3, 3),
        "last_active_sent_after_ack_ms": (
            round((stale[-1][0] - acknowledged) * 1e3, 3) if stale else None),
        "active_answers_after_ack": len(stale),
        "answers": len(answers),
        "poll_interval_ms": round(
            (answers[-1][1] - answers[0][0]) / len(answers) * 1e3, 3),
    }


def test_a_revocation_through_a_reaches_b_and_c(replicas: dict[str, ServerHandle]) -> None:
    a, b, c = replicas["A"], replicas["B"], replicas["C"]
    issuer = a.base_url
    with client_for(a) as on_a, client_for(b) as on_b, client_for(c) as on_c:
        granted = grant_through(on_a, issuer)
        # B and C know the token and the Mission (shared database), and cache its state.
        for http in (on_b, on_c, on_b, on_c):
            live = introspect(http, granted.access_token)
            assert live["active"] is True, live
            assert live["mission"] == {**live["mission"], "id": granted.mission_id,
                                       "state": "active", "version": 2}

        pollers = {name: Poller(server, granted.access_token)
                   for name, server in (("B", b), ("C", c))}
        threads = [threading.Thread(target=p.run, daemon=True) for p in pollers.values()]
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # both polling before the revoke

        sent = time.perf_counter()
        revoked = on_a.post("/mission/lifecycle", data={
            "mission": granted.mission_id, "operation": "revoke", "reason": "replica proof",
            "nonce": "n-" + secrets.token_urlsafe(12), "csrf_token": granted.csrf_token})
        acknowledged = time.perf_counter()
        assert revoked.status_code == 200, revoked.text
        assert revoked.headers["content-type"].startswith(
            "application/mission-status-response+jwt")
        status = jwt.decode(revoked.text, KeySet.import_key_set(on_a.get("/jwks").json()),
                            algorithms=["ES256", "EdDSA"]).claims
        assert (status["state"], status["version"]) == ("revoked", 3)

        # The refresh token is refused at once by B and C: the derivation gate locks the row.
        for http in (on_b, on_c):
            refused = dpop_post(http, issuer, "/token", granted.key, {
                "grant_type": "refresh_token", "refresh_token": granted.refresh_token,
            }, CLIENT)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"] == "invalid_grant"
            assert refused.json()["mission_state"] == "revoked"

        for thread in threads:
            thread.join(timeout=CONVERGE_TIMEOUT)
        for poller in pollers.values():
            poller.stop()
        for thread in threads:
            thread.join(timeout=HTTP_TIMEOUT)
        measured: dict[str, Any] = {}
        for name, poller in pollers.items():
            assert poller.error is None, f"{name}: {poller.error!r}"
            measured[name] = lag(poller.answers, acknowledged, CONVERGE_TIMEOUT)

        for http in (on_b, on_c):
            dead = introspect(http, granted.access_token)
            assert dead == {"active": False, "mission": {**dead["mission"], "state": "revoked",
                                                         "version": 3}}

    report = {
        "what": "POST /mission/lifecycle revoke through replica A, then B's and C's "
                "introspection of the Mission's access token, polled in a tight loop",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "revoke_round_trip_ms": round((acknowledged - sent) * 1e3, 3),
        "replicas": measured,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "replica-revocation.json").write_text(json.dumps(report, indent=2) + "\n")
    print("replica revocation lag:", json.dumps(report))

    for server in (a, b, c):
        _, log = server.output()
        statuses = [entry["status"] for entry in map(json.loads, filter(str.strip,
                                                                         log.splitlines()))
                    if entry.get("event") == "request"]
        assert statuses and all(status < 500 for status in statuses)
        assert "change_feed_listening" in log
