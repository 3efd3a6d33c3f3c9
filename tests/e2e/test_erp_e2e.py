"""The demo ERP API end to end: a real ``missionbound serve`` process (SQLite and PostgreSQL)
serving the AS and, at ``/demo/erp``, the ERP API (tier RS-D), which reaches the AS over
real HTTP (JWKS, signed Mission Status, Shared Signals, the Mission PDP's AuthZEN endpoint).
Driven with plain HTTP and real DPoP proofs.

bob approves alice's Mission (PAR, sign-in, consent, code, DPoP-bound token); the agent
reads invoices and posts a journal entry under the cap, permitted by the PDP (its Decision
Evidence is in the database and verifies with the AS's JWKS); one over the cap is refused
by the ERP itself; bob revokes the Mission through ``POST /mission/lifecycle`` (his browser
session). Then:

(a) with Shared Signals (the default), the ERP subscribed to the AS's lifecycle events at
    start; once the revocation's SET is pushed to it, the next request is refused by the
    ERP itself, although its staleness bound (60 s here) is far from reached;
(b) with signals off and a 2 s bound, a request right after the revocation is refused at
    once: by the PDP (403 with its evaluation_id) while the ERP's own observation is within
    its bound, by the ERP (401) after it.

Every wait is bounded.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from missionbound.mission.canonical import digest_json
from missionbound.protocol.dpop import access_token_hash
from missionbound.runtime.evidence import verify_evidence_chain
from missionbound.store.engine import create_engine_for
from missionbound.store.models import EvidenceRecord
from missionbound.store.transactions import Store
from tests.e2e.test_replicas import Granted, client_for, grant_through
from tests.e2e_support import ServerHandle, running_server
from tests.protocol.proofs import make_proof

LONG_STALENESS = 60
SHORT_STALENESS = 2.0
SIGNALS_READY_TIMEOUT = 20.0  # the ERP's subscription, made in the background at start
EVENT_TIMEOUT = 10.0  # a revocation's SET reaching the ERP


def log_entries(server: ServerHandle) -> list[dict[str, Any]]:
    """The server's JSON log lines so far."""
    entries = []
    for line in server.output()[1].splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line cut by the read
    return entries


def wait_for_log(server: ServerHandle, matches: Callable[[dict[str, Any]], bool], *,
                 timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next((entry for entry in log_entries(server) if matches(entry)), None)
        if found is not None:
            return found
        time.sleep(0.05)
    pytest.fail(f"{what}: not logged within {timeout} s; log tail:\n"
                + "\n".join(server.output()[1].splitlines()[-30:]))


def erp(http: httpx.Client, issuer: str, granted: Granted, method: str, path: str,
        **kwargs: Any) -> httpx.Response:
    """``method`` ``<issuer>/demo/erp<path>`` with the access token and a fresh DPoP proof."""
    url = f"{issuer}/demo/erp{path}"
    proof = make_proof(granted.key, htm=method, htu=url, iat=int(time.time()),
                       ath=access_token_hash(granted.access_token))
    return http.request(method, url, headers={
        "Authorization": f"DPoP {granted.access_token}", "DPoP": proof}, **kwargs)


def revoke(http: httpx.Client, issuer: str, granted: Granted) -> None:
    """bob (signed in while approving) revokes the Mission with his session's CSRF token."""
    answer = http.post(f"{issuer}/mission/lifecycle", data={
        "mission": granted.mission_id, "operation": "revoke", "reason": "e2e",
        "nonce": "n-" + secrets.token_urlsafe(12), "csrf_token": granted.csrf_token})
    assert answer.status_code == 200, answer.text


def assert_revoked(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    body = answer.json()
    assert (body["error"], body["reason"], body["mission_state"]) == (
        "invalid_token", "mission_inactive", "revoked"), body
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def assert_pdp_denied(answer: httpx.Response, reason: str) -> None:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert (body["error"], body["reason"]) == ("insufficient_scope", reason), body
    assert body["evaluation_id"].startswith("dec_"), body


def assert_decision_evidence(server: ServerHandle, http: httpx.Client, granted: Granted,
                             evaluation_id: str, parameters: dict[str, str]) -> None:
    """The PDP's Decision Evidence for ``evaluation_id`` is in the server's database, a
    permit for these parameters, and the Mission's chain verifies with the AS's JWKS."""
    engine = create_engine_for(server.database_url)
    try:
        with Store(engine).read() as session, session.begin():
            chain = [dict(row.record) for row in session.scalars(
                select(EvidenceRecord).where(EvidenceRecord.chain_id == granted.mission_id)
                .order_by(EvidenceRecord.sequence))]
    finally:
        engine.dispose()
    # Its Decision Evidence, and the Execution Evidence the ERP reported after posting it.
    [decided] = [record for record in chain
                 if record.get("evaluation_id") == evaluation_id and "evidence_id" in record]
    [executed] = [record for record in chain
                  if record.get("evaluation_id") == evaluation_id and "execution_id" in record]
    assert executed["outcome"] == "completed"
    assert (decided["decision"], decided["action"]["name"]) == ("permit",
                                                                "journal-entries.write")
    assert decided["parameter_digest"] == digest_json(parameters)
    report = verify_evidence_chain(chain, http.get(f"{server.base_url}/jwks").json())
    assert report.ok and report.records_checked == len(chain), report


def work_under_the_mission(server: ServerHandle, http: httpx.Client, granted: Granted) -> None:
    """Reads and a journal entry under the cap, as the agent does before the revocation."""
    issuer = server.base_url
    listed = erp(http, issuer, granted, "GET", "/invoices")
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["invoices"]) == 4
    entry = {"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"}
    posted = erp(http, issuer, granted, "POST", "/journal-entries", json=entry)
    assert posted.status_code == 201, posted.text
    assert posted.json()["posted_by"] == "alice"
    assert posted.json()["mission_id"] == granted.mission_id
    assert_decision_evidence(server, http, granted, posted.json()["evaluation_id"], entry)
    over = erp(http, issuer, granted, "POST", "/journal-entries",
               json={"invoice_id": "inv-acme-big", "amount": "900.00", "currency": "USD"})
    # Refused by the ERP before the PDP is asked: no evaluation_id (decision M132).
    assert over.status_code == 403 and over.json()["reason"] == "constraint_exceeded"
    assert "evaluation_id" not in over.json()


def no_server_errors(server: ServerHandle) -> None:
    statuses = [entry["status"] for entry in log_entries(server)
                if entry.get("event") == "request"]
    assert statuses and all(status < 500 for status in statuses)


def test_with_shared_signals_a_revocation_is_refused_at_once(
        tmp_path: Path, empty_database_url: str) -> None:
    env = {"MISSIONBOUND_DEMO_ERP_STALENESS_SECONDS": str(LONG_STALENESS)}
    with running_server(tmp_path, database_url=empty_database_url, env=env) as server, \
            client_for(server) as http:
        issuer = server.base_url
        # The ERP's stream exists and a verification event made it back (demo/erp.py).
        wait_for_log(server, lambda e: e.get("event") == "demo_erp_signals_ready",
                     timeout=SIGNALS_READY_TIMEOUT, what="the ERP's Shared Signals stream")
        metadata = http.get(f"{issuer}/.well-known/oauth-protected-resource/demo/erp").json()
        assert metadata["mission_state_staleness_seconds"] == LONG_STALENESS

        granted = grant_through(http, issuer)
        observed = time.monotonic()
        work_under_the_mission(server, http, granted)

        revoke(http, issuer, granted)
        wait_for_log(server, lambda e: (e.get("event") == "set_received"
                                        and e.get("mission_id") == granted.mission_id
                                        and e.get("state") == "revoked"),
                     timeout=EVENT_TIMEOUT, what="the revocation's SET at the ERP")
        assert_revoked(erp(http, issuer, granted, "GET", "/invoices"))
        assert_revoked(erp(http, issuer, granted, "POST", "/journal-entries",
                           json={"invoice_id": "inv-acme-1", "amount": "1.00",
                                 "currency": "USD"}))
        # Only the event can have done it: the last observation is younger than the bound.
        assert time.monotonic() - observed < LONG_STALENESS
        no_server_errors(server)


def test_without_signals_a_revocation_is_refused_after_the_staleness_bound(
        tmp_path: Path, empty_database_url: str) -> None:
    env = {"MISSIONBOUND_DEMO_ERP_SIGNALS": "false",
           "MISSIONBOUND_DEMO_ERP_STALENESS_SECONDS": str(SHORT_STALENESS)}
    with running_server(tmp_path, database_url=empty_database_url, env=env) as server, \
            client_for(server) as http:
        issuer = server.base_url
        granted = grant_through(http, issuer)
        sent = time.monotonic()  # the ERP observes this new Mission only after this
        work_under_the_mission(server, http, granted)
        revoke(http, issuer, granted)
        revoked = time.monotonic()  # every observation made before the revocation is older
        right_after = erp(http, issuer, granted, "GET", "/invoices")
        if time.monotonic() - sent < SHORT_STALENESS:
            # Checked within the bound of an observation made after `sent`: the ERP still
            # acts on what the AS said before the revocation (that is what the bound
            # means), and the PDP, which reads the Mission's state itself, denies it.
            assert_pdp_denied(right_after, "mission_inactive")
        else:
            assert right_after.status_code in (401, 403), right_after.text

        time.sleep(max(0.0, revoked + SHORT_STALENESS + 0.1 - time.monotonic()))
        assert_revoked(erp(http, issuer, granted, "GET", "/invoices"))
        events = {entry.get("event") for entry in log_entries(server)}
        assert "set_received" not in events and "demo_erp_signals_ready" not in events
        no_server_errors(server)


def test_a_burst_of_state_lookups_does_not_starve_the_as_it_asks(tmp_path: Path) -> None:
    # The demo ERP asks this same process's /mission/status and /jwks, and its PDP about
    # every read (RS-D). 80 requests of one Mission arriving together once its state is
    # stale must all be answered: their waits stay in the guard's own thread pool, never on
    # the threads those endpoints need (with the shared pool they all came back 503
    # mission_state_unavailable after 6 s).
    import asyncio

    env = {"MISSIONBOUND_DEMO_ERP_SIGNALS": "false",
           "MISSIONBOUND_DEMO_ERP_STALENESS_SECONDS": "1"}
    with running_server(tmp_path, env=env) as server, client_for(server) as http:
        issuer = server.base_url
        granted = grant_through(http, issuer)
        url = f"{issuer}/demo/erp/invoices"

        def headers() -> dict[str, str]:
            made = make_proof(granted.key, htm="GET", htu=url, iat=int(time.time()),
                              ath=access_token_hash(granted.access_token))
            return {"Authorization": f"DPoP {granted.access_token}", "DPoP": made}

        assert http.get(url, headers=headers()).status_code == 200
        time.sleep(1.2)  # the observation is now older than the bound
        burst = [headers() for _ in range(80)]

        async def send_all() -> list[int]:
            limits = httpx.Limits(max_connections=90, max_keepalive_connections=90)
            async with httpx.AsyncClient(timeout=20, limits=limits) as client:
                answers = await asyncio.gather(*(client.get(url, headers=h) for h in burst))
            return [answer.status_code for answer in answers]

        assert asyncio.run(send_all()) == [200] * 80
        no_server_errors(server)
