"""The demo ERP API (missionbound/demo/erp.py) as ``serve`` mounts it at ``/demo/erp``,
in process, through the real Authorization Server flow (tests/issuer/flow.py), on SQLite
and PostgreSQL.

The ERP reaches the AS over HTTP like any Resource Server (JWKS, signed Mission Status,
Shared Signals stream API). In process, ``create_app(http_client=...)`` is given a
:class:`Loopback`: an httpx client bound, once the app exists, to a TestClient of that same
app. Access tokens come from ``flow.grant`` (PAR, consent by bob, code, DPoP-bound token for
the ERP), requests carry real DPoP proofs (tests/protocol/proofs.py), the Mission is revoked
through ``POST /mission/lifecycle`` (bob's browser session).

Two apps share the module's database: ``flow`` with a 1 s staleness bound (the bound
passing is what refuses a revoked Mission), ``long_flow`` with a 60 s bound (only a
lifecycle event pushed by the AS's transmitter can refuse it that soon).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi.testclient import TestClient

import missionbound.demo.erp as erp_module
import tests.issuer.flow as flow_module
from missionbound.config import ENV_PREFIX
from missionbound.demo.erp import (
    INVOICES,
    STREAM_DESCRIPTION,
    ErpSignals,
    push_authorization,
)
from missionbound.issuer.signal_delivery import SignalTransmitter
from missionbound.protocol.dpop import access_token_hash
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
        built = build_flow(database_url, data_dir, demo_erp_staleness_seconds=staleness)
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


def call(flow: Flow, grant: Grant, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """``method`` ``/demo/erp<path>`` with the grant's access token and a fresh DPoP proof."""
    assert grant.dpop_key is not None
    url = ERP + path
    proof = make_proof(grant.dpop_key, htm=method, htu=url.split("?")[0],
                       iat=int(flow.now().timestamp()), ath=access_token_hash(grant.access_token))
    headers = {"Authorization": f"DPoP {grant.access_token}", "DPoP": proof,
               **kwargs.pop("headers", {})}
    return flow.client.request(method, url, headers=headers, **kwargs)


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


def test_a_journal_entry_under_the_cap_is_posted_with_its_evidence(flow: Flow) -> None:
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


def test_over_the_cap_is_refused_and_nothing_is_stored(flow: Flow) -> None:
    granted = grant(flow)  # max_value 500.00 USD (the demo intent)
    before = journal(flow)
    over = call(flow, granted, "POST", "/journal-entries", json=entry("inv-acme-big", "900.00"))
    body = refused(over, 403, "insufficient_scope", "constraint_exceeded")
    assert "500.00 USD" in body["error_description"]
    just_over = call(flow, granted, "POST", "/journal-entries",
                     json=entry("inv-acme-big", "500.01"))
    refused(just_over, 403, "insufficient_scope", "constraint_exceeded")
    assert journal(flow) == before


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


# -- the Mission's state (RS-C) ----------------------------------------------------------------


def test_a_revoked_mission_is_refused_once_the_staleness_bound_has_passed(flow: Flow) -> None:
    granted = grant(flow)
    sent = time.monotonic()
    assert call(flow, granted, "GET", "/invoices").status_code == 200  # observed: active
    answered = time.monotonic()
    revoke(flow, granted.mission_id)

    # Within the bound the ERP may still act on what the AS said before the revocation.
    right_after = call(flow, granted, "GET", "/invoices")
    if time.monotonic() - sent < STALENESS:  # the check happened within the bound
        assert right_after.status_code == 200, right_after.text

    time.sleep(max(0.0, answered + STALENESS + 0.05 - time.monotonic()))
    after_bound = call(flow, granted, "GET", "/invoices")
    body = refused(after_bound, 401, "invalid_token", "mission_inactive")
    assert body["mission_state"] == "revoked"
    posted = call(flow, granted, "POST", "/journal-entries", json=entry())
    assert refused(posted, 401, "invalid_token", "mission_inactive")["mission_state"] == "revoked"


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
        # No event delivered yet: the 60 s bound still holds the observation.
        assert call(flow, granted, "GET", "/invoices").status_code == 200
        report = transmitter.run_once()
        assert report.accepted >= 1 and report.rejected == report.failed == 0, report
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
        "mission_enforcement_tier": "RS-C",
        "mission_state_staleness_seconds": STALENESS,
    }
    assert "ES256" in answer.json()["dpop_signing_alg_values_supported"]
    long = long_flow.client.get(METADATA_PATH).json()
    assert long["mission_state_staleness_seconds"] == LONG_STALENESS


# -- an example to copy ------------------------------------------------------------------------


def test_the_erp_is_built_on_the_public_kit_only() -> None:
    """DESIGN.md "Rules of the house": the ERP is a Resource Server, so it uses the kit, the
    Shared Signals receiver and the JWKS cache the kit's docs show, never the AS's code."""
    allowed = ("missionbound.enforce.rs", "missionbound.enforce.signals",
               "missionbound.protocol.jwks")
    source = Path(erp_module.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("missionbound"):
            assert node.module in allowed, node.module
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("missionbound") for alias in node.names)
