"""The demo ERP API (missionbound/demo/erp.py) as ``serve`` mounts it at ``/demo/erp``,
in process, through the real Authorization Server flow (tests/issuer/flow.py), on SQLite
and PostgreSQL.

The ERP is an RS-D Resource Server: it reaches the AS over HTTP like any Resource Server
(JWKS, signed Mission Status, Shared Signals stream API) and asks the AS's Mission PDP
(AuthZEN, ``/access/v1/evaluation``) about every call. In process,
``create_app(http_client=...)`` is given a :class:`Loopback`: an httpx client bound, once
the app exists, to a TestClient of that same app. Access tokens come from ``flow.grant``
(PAR, consent by bob, code, DPoP-bound token for the ERP), requests carry real DPoP proofs
(tests/protocol/proofs.py), the Mission is revoked through ``POST /mission/lifecycle`` (bob's
browser session).

Two apps share the module's database: ``flow`` with a 1 s staleness bound, ``long_flow``
with a 60 s bound (only the PDP, or a lifecycle event pushed by the AS's transmitter, can
refuse a revoked Mission that soon). The PDP denies a revoked Mission at once (403 with its
``evaluation_id``); once the ERP's own view of the state says so, the ERP refuses it itself
(401 ``invalid_token``), without asking the PDP.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.routing import Mount

import missionbound.demo.erp as erp_module
import tests.issuer.flow as flow_module
from missionbound.config import ENV_PREFIX
from missionbound.demo.erp import (
    INVOICES,
    STREAM_DESCRIPTION,
    ErpSignals,
    build_erp_app,
    push_authorization,
)
from missionbound.issuer.signal_delivery import SignalTransmitter
from missionbound.mission.canonical import digest_json
from missionbound.protocol.dpop import access_token_hash
from missionbound.runtime.evidence import verify_evidence_chain
from missionbound.store.models import EvidenceRecord
from missionbound.web.app import create_app
from tests.issuer.conftest import flow_database_url  # noqa: F401 (the shared fixture)
from tests.issuer.flow import ERP, ISSUER, Flow, Grant, build_flow
from tests.issuer.governance_support import DEMO_RS, governance
from tests.protocol.proofs import generate_key, make_proof

STALENESS = 1.0  # the short bound of ``flow``
LONG_STALENESS = 60.0  # the bound of ``long_flow``: never reached by a test
PUSH_ENDPOINT = f"{ERP}/ssf/events"
METADATA_PATH = "/.well-known/oauth-protected-resource/demo/erp"


class Loopback:
    """An HTTP client into an app that does not exist yet: requests go to ``target`` (a
    TestClient of the app, set once it is built), as they would over a network."""

    def __init__(self) -> None:
        self.target: TestClient | None = None
        self.client = httpx.Client(transport=httpx.MockTransport(self._forward))

    def _forward(self, request: httpx.Request) -> httpx.Response:
        assert self.target is not None, "the loopback is not bound to an app yet"
        answer = self.target.request(request.method, str(request.url),
                                     headers=dict(request.headers), content=request.read())
        return httpx.Response(answer.status_code, headers=answer.headers,
                              content=answer.content)


def erp_flow(database_url: str, data_dir: Path, staleness: float) -> Iterator[Flow]:
    """tests/issuer/flow.py ``build_flow`` with the ERP's bound and a :class:`Loopback`."""
    loopback = Loopback()
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        patch.setattr(flow_module, "create_app", partial(create_app,
                                                         http_client=loopback.client))
        built = build_flow(database_url, data_dir, demo_erp_staleness_seconds=staleness,
                           demo_erp_signals=True)
    loopback.target = TestClient(built.app, base_url=ISSUER, follow_redirects=False)
    try:
        yield built
    finally:
        loopback.target.close()
        loopback.client.close()
        built.client.close()
        built.engine.dispose()


@pytest.fixture(scope="module")
def flow(flow_database_url: str,  # noqa: F811 (the imported fixture)
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    yield from erp_flow(flow_database_url, tmp_path_factory.mktemp("erp"), STALENESS)


@pytest.fixture(scope="module")
def long_flow(flow_database_url: str,  # noqa: F811 (the imported fixture)
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    yield from erp_flow(flow_database_url, tmp_path_factory.mktemp("erp-long"), LONG_STALENESS)


# -- helpers -------------------------------------------------------------------------------


def call(flow: Flow, grant: Grant, method: str, path: str, *, via: TestClient | None = None,
         **kwargs: Any) -> httpx.Response:
    """``method`` ``/demo/erp<path>`` with the grant's access token and a fresh DPoP proof
    (to the flow's app, or to ``via``)."""
    assert grant.dpop_key is not None
    url = ERP + path
    proof = make_proof(grant.dpop_key, htm=method, htu=url.split("?")[0],
                       iat=int(flow.now().timestamp()), ath=access_token_hash(grant.access_token))
    headers = {"Authorization": f"DPoP {grant.access_token}", "DPoP": proof,
               **kwargs.pop("headers", {})}
    return (via or flow.client).request(method, url, headers=headers, **kwargs)


def grant(flow: Flow, **push: Any) -> Grant:
    return flow.grant(dpop_key=generate_key(), **push)


def journal(flow: Flow) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = flow.app.state.demo_erp.state.journal
    return list(entries)


def refused(response: httpx.Response, status: int, error: str, reason: str) -> dict[str, Any]:
    """An OAuth-shaped refusal of the kit, with its DPoP challenge naming the metadata."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert (body["error"], body["reason"]) == (error, reason), body
    assert body["error_description"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ") and f'error="{error}"' in challenge, challenge
    assert f'resource_metadata="{ISSUER}{METADATA_PATH}"' in challenge
    return body


def evidence(flow: Flow, mission_id: str) -> list[dict[str, Any]]:
    """The Mission's evidence chain as stored, in sequence order."""
    with flow.store.read() as session, session.begin():
        rows = session.scalars(select(EvidenceRecord).where(
            EvidenceRecord.chain_id == mission_id).order_by(EvidenceRecord.sequence)).all()
        return [dict(row.record) for row in rows]


def decisions(flow: Flow, mission_id: str) -> list[dict[str, Any]]:
    """The PDP's Decision Evidence for the Mission, oldest first."""
    return [record for record in evidence(flow, mission_id) if "evidence_id" in record]


def pdp_denied(response: httpx.Response, reason: str) -> dict[str, Any]:
    """A deny of the PDP as the ERP passes it on: 403 with the PDP's reason and the
    ``evaluation_id`` naming its Decision Evidence."""
    body = refused(response, 403, "insufficient_scope", reason)
    assert body["evaluation_id"].startswith("dec_"), body
    return body


def revoke(flow: Flow, mission_id: str) -> None:
    answer = governance(flow).lifecycle(mission_id, "revoke", user="bob")
    assert answer.status_code == 200, answer.text


def entry(invoice_id: str = "inv-acme-1", amount: str = "120.00",
          currency: str = "USD") -> dict[str, str]:
    return {"invoice_id": invoice_id, "amount": amount, "currency": currency}


# -- reads -----------------------------------------------------------------------------------


def test_invoices_are_listed_filtered_and_read(flow: Flow) -> None:
    granted = grant(flow)
    listed = call(flow, granted, "GET", "/invoices")
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"invoices": list(INVOICES.values())}
    assert [i["invoice_id"] for i in listed.json()["invoices"]] == [
        "inv-acme-1", "inv-acme-2", "inv-acme-big", "inv-globex-1"]
    acme = call(flow, granted, "GET", "/invoices?vendor=acme").json()["invoices"]
    assert {i["vendor"] for i in acme} == {"acme"} and len(acme) == 3
    assert call(flow, granted, "GET", "/invoices?vendor=nobody").json() == {"invoices": []}

    one = call(flow, granted, "GET", "/invoices/inv-globex-1")
    assert one.status_code == 200
    assert one.json() == {"invoice_id": "inv-globex-1", "vendor": "globex",
                          "amount": "200.00", "currency": "USD"}
    missing = call(flow, granted, "GET", "/invoices/inv-nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["error"] == "not_found"


def test_each_read_is_decided_by_the_pdp(flow: Flow) -> None:
    """``invoices.read`` is a consequential_read: gated, so the PDP decides every read, over
    the parameters the route uses, and records it (decision M131). Its permit has no
    parameter binding and no signed permit: the read's answer is unchanged."""
    granted = grant(flow)
    assert call(flow, granted, "GET", "/invoices?vendor=acme").status_code == 200
    assert call(flow, granted, "GET", "/invoices/inv-acme-1").status_code == 200
    reads = decisions(flow, granted.mission_id)
    assert [(d["action"]["name"], d["decision"], d["action_class"]) for d in reads] == [
        ("invoices.read", "permit", "consequential_read")] * 2
    assert [d["resource"] for d in reads] == [
        {"type": "http_route", "id": "GET /demo/erp/invoices"},
        {"type": "http_route", "id": "GET /demo/erp/invoices/inv-acme-1"}]
    assert all(d["audience"] == ERP and "use_limit" not in d["conditions"] for d in reads)
    # A read the route could not act on as asked is refused before the PDP is asked.
    twice = call(flow, granted, "GET", "/invoices?vendor=acme&vendor=globex")
    assert twice.status_code == 400 and twice.json()["reason"] == "parameter_invalid"
    assert len(decisions(flow, granted.mission_id)) == 2


def test_no_token_or_a_dpop_bound_token_as_bearer_is_refused(flow: Flow) -> None:
    anonymous = flow.client.get(f"{ERP}/invoices")
    assert anonymous.status_code == 401
    assert anonymous.json()["reason"] == "missing_token"
    assert anonymous.headers["www-authenticate"].startswith("DPoP ")  # DPoP required
    granted = grant(flow)
    bearer = flow.client.get(f"{ERP}/invoices",
                             headers={"Authorization": f"Bearer {granted.access_token}"})
    refused(bearer, 401, "invalid_token", "dpop_required")
    # A proof for another URL (DPoP htu) does not count.
    proof = make_proof(granted.dpop_key or generate_key(), htm="GET", htu=f"{ERP}/elsewhere",
                       iat=int(flow.now().timestamp()),
                       ath=access_token_hash(granted.access_token))
    wrong_url = flow.client.get(f"{ERP}/invoices", headers={
        "Authorization": f"DPoP {granted.access_token}", "DPoP": proof})
    refused(wrong_url, 401, "invalid_dpop_proof", "invalid_proof")


# -- journal entries ---------------------------------------------------------------------------


def test_a_journal_entry_under_the_cap_is_permitted_by_the_pdp_with_its_evidence(
        flow: Flow) -> None:
    granted = grant(flow)
    before = journal(flow)
    posted = call(flow, granted, "POST", "/journal-entries", json=entry("inv-acme-2", "499.00"))
    assert posted.status_code == 201, posted.text
    body = posted.json()
    _, claims = flow.decode(granted.access_token)
    assert body == {**body, "invoice_id": "inv-acme-2", "vendor": "acme", "amount": "499.00",
                    "currency": "USD", "posted_by": "alice", "acting_client": "demo-agent",
                    "mission_id": granted.mission_id, "jti": claims["jti"]}
    assert body["entry_id"].startswith("je-") and body["posted_at"].endswith("Z")
    assert journal(flow) == [*before, body]

    # The PDP's permit the entry was posted under: its Decision Evidence, for this action
    # and exactly these parameters, in the Mission's chain, which verifies with the JWKS.
    evaluation_id = body["evaluation_id"]
    assert evaluation_id.startswith("dec_")
    chain = evidence(flow, granted.mission_id)
    # Its Decision Evidence, and the Execution Evidence the ERP reported after posting it.
    [decided] = [record for record in chain
                 if record.get("evaluation_id") == evaluation_id and "evidence_id" in record]
    [executed] = [record for record in chain
                  if record.get("evaluation_id") == evaluation_id and "execution_id" in record]
    assert executed["outcome"] == "completed"
    assert decided["decision"] == "permit" and decided["action"]["name"] == \
        "journal-entries.write"
    assert decided["action_class"] == "consequential_write" and decided["audience"] == ERP
    assert decided["parameter_digest"] == digest_json(entry("inv-acme-2", "499.00"))
    assert decided["conditions"]["use_limit"] == 1
    assert decided["mission"]["id"] == granted.mission_id
    report = verify_evidence_chain(chain, flow.client.get("/jwks").json())
    assert report.ok and report.records_checked == len(chain), report
    # The record is what the PDP signed: another evaluation_id breaks the chain.
    forged = [{**record, "evaluation_id": "dec_forged"} if record is decided else record
              for record in chain]
    assert not verify_evidence_chain(forged, flow.client.get("/jwks").json()).ok


def test_over_the_cap_is_refused_by_the_erp_before_the_pdp_is_asked(flow: Flow) -> None:
    """RS-D keeps the constraints it can evaluate local (decision M132): an entry over the
    Mission's max_value is refused by the ERP itself, with the cap in the description and
    no evaluation_id (no PDP decision was made), and nothing is stored."""
    granted = grant(flow)  # max_value 500.00 USD (the demo intent)
    before = journal(flow)
    over = call(flow, granted, "POST", "/journal-entries", json=entry("inv-acme-big", "900.00"))
    body = refused(over, 403, "insufficient_scope", "constraint_exceeded")
    assert "500.00 USD" in body["error_description"] and "evaluation_id" not in body
    just_over = call(flow, granted, "POST", "/journal-entries",
                     json=entry("inv-acme-big", "500.01"))
    refused(just_over, 403, "insufficient_scope", "constraint_exceeded")
    assert journal(flow) == before
    assert decisions(flow, granted.mission_id) == []


def test_a_mission_without_journal_entries_write_reads_but_cannot_post(flow: Flow) -> None:
    reads_only = [{"type": "mission_resource_access", "resource": ERP,
                   "actions": ["invoices.read"]}]
    granted = grant(flow, authorization_details=json.dumps(reads_only))
    _, claims = flow.decode(granted.access_token)
    erp_actions = {action for detail in claims["authorization_details"]
                   if detail["resource"] == ERP for action in detail["actions"]}
    assert erp_actions == {"invoices.read"}
    assert call(flow, granted, "GET", "/invoices/inv-acme-1").status_code == 200
    before = journal(flow)
    posted = call(flow, granted, "POST", "/journal-entries", json=entry())
    refused(posted, 403, "insufficient_scope", "action_not_granted")
    assert journal(flow) == before


@pytest.mark.parametrize(("content", "status", "error"), [
    # The kit reads the cap's parameters strictly, before the route runs...
    (b'{"invoice_id": "inv-acme-1", "amount": "12.345", "currency": "USD"}', 400,
     "invalid_request"),
    (b'{"invoice_id": "inv-acme-1", "amount": 120, "currency": "USD"}', 400, "invalid_request"),
    (b'{"invoice_id": "inv-acme-1", "amount": "1", "amount": "9000", "currency": "USD"}', 400,
     "invalid_request"),
    (b'{"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "EUR"}', 403,
     "insufficient_scope"),
    (b"[1]", 400, "invalid_request"),
    # ... and the route validates the rest.
    (b'{"invoice_id": "inv-nope", "amount": "120.00", "currency": "USD"}', 400,
     "invalid_request"),
    (b'{"invoice_id": "inv-acme-1", "amount": "0", "currency": "USD"}', 400, "invalid_request"),
    (b'{"invoice_id": "inv-acme-1", "amount": "1.00", "currency": "USD", "memo": "x"}', 400,
     "invalid_request"),
])
def test_a_bad_journal_entry_is_refused_and_nothing_is_stored(
        flow: Flow, content: bytes, status: int, error: str) -> None:
    granted = grant(flow)
    before = journal(flow)
    answer = call(flow, granted, "POST", "/journal-entries", content=content,
                  headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error and answer.json()["error_description"]
    assert journal(flow) == before


# -- the Mission's state: the PDP at once, the ERP's own view within its bound ---------------


def test_a_revoked_mission_is_denied_by_the_pdp_at_once(long_flow: Flow) -> None:
    """The ERP's view still says active (observed just now, 60 s bound, no event pushed): the
    PDP, which reads the Mission's state itself, denies every call, reads included."""
    flow = long_flow
    granted = grant(flow)
    assert call(flow, granted, "GET", "/invoices").status_code == 200  # observed: active
    before = journal(flow)
    revoke(flow, granted.mission_id)

    posted = pdp_denied(call(flow, granted, "POST", "/journal-entries", json=entry()),
                        "mission_inactive")
    read = pdp_denied(call(flow, granted, "GET", "/invoices"), "mission_inactive")
    assert journal(flow) == before
    denies = {d["evaluation_id"]: d for d in decisions(flow, granted.mission_id)
              if d["decision"] == "deny"}
    assert denies[posted["evaluation_id"]]["denial_reason"] == "mission_inactive"
    assert denies[posted["evaluation_id"]]["action"]["name"] == "journal-entries.write"
    assert denies[read["evaluation_id"]]["action"]["name"] == "invoices.read"


def test_once_the_staleness_bound_has_passed_the_erp_refuses_by_itself(flow: Flow) -> None:
    granted = grant(flow)
    sent = time.monotonic()
    assert call(flow, granted, "GET", "/invoices").status_code == 200  # observed: active
    answered = time.monotonic()
    revoke(flow, granted.mission_id)

    # Within the bound the ERP may still act on what the AS said before the revocation: the
    # PDP denies it then. (Past the bound already, the ERP refuses by itself.)
    right_after = call(flow, granted, "GET", "/invoices")
    if time.monotonic() - sent < STALENESS:  # the check happened within the bound
        pdp_denied(right_after, "mission_inactive")
    else:
        assert right_after.status_code in (401, 403), right_after.text

    time.sleep(max(0.0, answered + STALENESS + 0.05 - time.monotonic()))
    decided = len(decisions(flow, granted.mission_id))
    after_bound = call(flow, granted, "GET", "/invoices")
    body = refused(after_bound, 401, "invalid_token", "mission_inactive")
    assert body["mission_state"] == "revoked" and "evaluation_id" not in body
    posted = call(flow, granted, "POST", "/journal-entries", json=entry())
    assert refused(posted, 401, "invalid_token", "mission_inactive")["mission_state"] == "revoked"
    assert len(decisions(flow, granted.mission_id)) == decided  # the PDP was not asked


def test_a_pushed_lifecycle_event_refuses_the_next_request(long_flow: Flow) -> None:
    flow = long_flow
    signals: ErpSignals = flow.app.state.demo_erp.state.signals
    loopback_client = signals.http  # the ERP's way to the AS, bound to this app
    # The AS's own transmitter, pushing through the in-process client.
    transmitter = SignalTransmitter(flow.issuer, push_timeout_seconds=5,
                                    max_backoff_seconds=1, http=loopback_client)
    stream_id = signals.subscribe()
    try:
        granted = grant(flow)
        transmitter.run_once()  # the events so far (submission, activation) reach the ERP
        assert call(flow, granted, "GET", "/invoices").status_code == 200  # observed: active
        revoke(flow, granted.mission_id)
        # No event delivered yet: the 60 s bound still holds the observation, and only the
        # PDP refuses.
        pdp_denied(call(flow, granted, "GET", "/invoices"), "mission_inactive")
        report = transmitter.run_once()
        assert report.accepted >= 1 and report.rejected == report.failed == 0, report
        # The event reached the ERP: it refuses by itself, as the state it now knows.
        body = refused(call(flow, granted, "GET", "/invoices"), 401, "invalid_token",
                       "mission_inactive")
        assert body["mission_state"] == "revoked"
    finally:
        transmitter.close()
        flow.client.delete("/ssf/streams", params={"stream_id": stream_id}, auth=DEMO_RS)


def test_subscribing_again_takes_over_the_same_stream(long_flow: Flow) -> None:
    flow = long_flow
    signals: ErpSignals = flow.app.state.demo_erp.state.signals
    # Left by a run at another issuer URL: taken over, not left to pile up.
    leftover = flow.client.post("/ssf/streams", auth=DEMO_RS, json={
        "delivery": {"method": "urn:ietf:rfc:8935",
                     "endpoint_url": "http://127.0.0.1:1/demo/erp/ssf/events"},
        "description": STREAM_DESCRIPTION})
    assert leftover.status_code == 201, leftover.text
    first = signals.subscribe()
    try:
        assert first == leftover.json()["stream_id"]
        assert signals.subscribe() == first  # a restart: the stream is taken over again
        mine = [stream for stream in flow.client.get("/ssf/streams", auth=DEMO_RS).json()
                if stream["delivery"]["endpoint_url"] == PUSH_ENDPOINT
                or stream.get("description") == STREAM_DESCRIPTION]
        assert [stream["stream_id"] for stream in mine] == [first]
        assert mine[0]["delivery"]["endpoint_url"] == PUSH_ENDPOINT
        assert mine[0]["delivery"]["method"] == "urn:ietf:rfc:8935"
        assert mine[0]["events_delivered"] == [
            "https://schemas.missionbound.dev/secevent/mission/lifecycle-change"]
        # A paused stream is enabled again.
        paused = flow.client.post("/ssf/status", json={"stream_id": first, "status": "paused"},
                                  auth=DEMO_RS)
        assert paused.status_code == 200, paused.text
        assert signals.subscribe() == first
        status = flow.client.get("/ssf/status", params={"stream_id": first}, auth=DEMO_RS)
        assert status.json()["status"] == "enabled"
    finally:
        flow.client.delete("/ssf/streams", params={"stream_id": first}, auth=DEMO_RS)


def test_when_the_stream_api_fails_the_erp_says_so_and_keeps_its_bound(
        long_flow: Flow) -> None:
    signals: ErpSignals = long_flow.app.state.demo_erp.state.signals
    down = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(503)))
    broken = dataclasses.replace(signals, http=down)
    with structlog.testing.capture_logs() as logs:
        asyncio.run(broken.run(attempts=2, first_delay=0.01))
    [entry] = [e for e in logs if e["event"] == "demo_erp_signals_unavailable"]
    assert entry["log_level"] == "warning" and "HTTP 503" in entry["detail"]
    assert "staleness bound" in entry["consequence"]


def test_the_push_endpoint_takes_only_the_subscribed_authorization(long_flow: Flow) -> None:
    flow = long_flow
    headers = {"Content-Type": "application/secevent+jwt"}
    stranger = flow.client.post(PUSH_ENDPOINT, content=b"x.y.z",
                                headers={**headers, "Authorization": "Bearer guess"})
    assert stranger.status_code == 401
    expected = push_authorization(DEMO_RS[1], PUSH_ENDPOINT)
    junk = flow.client.post(PUSH_ENDPOINT, content=b"x.y.z",
                            headers={**headers, "Authorization": expected})
    assert junk.status_code == 400 and junk.json()["err"] == "invalid_request"


def test_without_signals_there_is_no_push_endpoint(flow_database_url: str,  # noqa: F811
                                                    tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        built = build_flow(flow_database_url, tmp_path / "data", demo_erp_signals=False)
    try:
        assert built.app.state.demo_erp.state.signals is None
        answer = built.client.post(PUSH_ENDPOINT, content=b"x.y.z",
                                   headers={"Content-Type": "application/secevent+jwt"})
        assert answer.status_code in (404, 405)
    finally:
        built.client.close()
        built.engine.dispose()


# -- the PDP cannot answer: fail closed -------------------------------------------------------


def _connection_refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _timed_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize("pdp_answer", [
    _connection_refused,
    _timed_out,
    lambda _: httpx.Response(500, json={"error": "server_error"}),
    lambda _: httpx.Response(200, json={"permit": True}),  # not an AuthZEN decision
], ids=["refused", "timeout", "5xx", "not_a_decision"])
def test_when_the_pdp_cannot_be_asked_the_erp_fails_closed(
        flow: Flow, pdp_answer: Callable[[httpx.Request], httpx.Response]) -> None:
    """The ERP as ``serve`` builds it, on a network where everything of the AS answers but
    its PDP: 503 ``pdp_unreachable`` with Retry-After, and nothing runs."""
    def network(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/access/v1/evaluation":
            return pdp_answer(request)
        answer = flow.client.request(request.method, str(request.url),
                                     headers=dict(request.headers), content=request.read())
        return httpx.Response(answer.status_code, headers=answer.headers,
                              content=answer.content)

    with httpx.Client(transport=httpx.MockTransport(network)) as http:
        erp = build_erp_app(issuer=ISSUER, resource=ERP, http_client=http,
                            rs_client_id=DEMO_RS[0], rs_client_secret=DEMO_RS[1])
        host = Starlette(routes=[Mount("/demo/erp", app=erp)])
        with TestClient(host, base_url=ISSUER) as client:
            granted = grant(flow)
            for method, path, body in (("POST", "/journal-entries", entry()),
                                       ("GET", "/invoices", None)):
                answer = call(flow, granted, method, path, via=client, json=body)
                assert answer.status_code == 503, answer.text
                assert (answer.json()["error"], answer.json()["reason"]) == (
                    "temporarily_unavailable", "pdp_unreachable")
                assert int(answer.headers["retry-after"]) > 0
            assert erp.state.journal == []
            # The PEP works otherwise: over the cap is still its own refusal.
            over = call(flow, granted, "POST", "/journal-entries", via=client,
                        json=entry("inv-acme-big", "900.00"))
            assert over.status_code == 403 and over.json()["reason"] == "constraint_exceeded"
    assert decisions(flow, granted.mission_id) == []


# -- metadata ----------------------------------------------------------------------------------


def test_the_protected_resource_metadata(flow: Flow, long_flow: Flow) -> None:
    answer = flow.client.get(METADATA_PATH)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "resource": ERP,
        "resource_name": "Demo ERP API",
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": answer.json()["dpop_signing_alg_values_supported"],
        "dpop_bound_access_tokens_required": True,
        "authorization_details_types_supported": ["mission_resource_access"],
        "mission_bound_authorization_required": True,
        "mission_constraints_supported": ["data_classification", "max_value"],
        "mission_enforcement_tier": "RS-D",
        "mission_state_staleness_seconds": STALENESS,
    }
    assert "ES256" in answer.json()["dpop_signing_alg_values_supported"]
    long = long_flow.client.get(METADATA_PATH).json()
    assert long["mission_state_staleness_seconds"] == LONG_STALENESS


# -- an example to copy ------------------------------------------------------------------------


def test_the_erp_is_built_on_the_public_kit_only() -> None:
    """DESIGN.md "Rules of the house": the ERP is a Resource Server, so it uses the kit, the
    Shared Signals receiver and the JWKS cache the kit's docs show (and the demo invoices it
    shares with the demo payments MCP server), never the AS's code."""
    allowed = ("missionbound.enforce.rs", "missionbound.enforce.signals",
               "missionbound.protocol.jwks", "missionbound.demo.invoices")
    source = Path(erp_module.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("missionbound"):
            assert node.module in allowed, node.module
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("missionbound") for alias in node.names)
