"""``POST /mission/status`` (PROFILE.md section 10; docs/mission-governance.md) over HTTP, on
SQLite and PostgreSQL: the signed answer checked with the AS's JWKS, audience minimization,
unknown and unauthorized answered byte for byte alike, every state a success, and the lazy
expiry persisted with its event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from missionbound.mission.lifecycle import State
from missionbound.store.models import OutboxEvent
from tests.issuer.flow import AGENT as AGENT_SECRET
from tests.issuer.flow import ERP, ISSUER, MCP, Flow, last_audit_seq, refusals
from tests.issuer.governance_support import (
    AGENT,
    DEMO_RS,
    KEY_RS,
    STATUS,
    STATUS_TYPE,
    SUBAGENT,
    Governance,
    governance,
    nonce,
)
from tests.protocol.proofs import generate_key
from tests.store.concurrency import run_concurrently


@pytest.fixture(scope="module")
def gov(flow: Flow) -> Governance:
    return governance(flow)


def events(gov: Governance, mission_id: str) -> list[dict[str, Any]]:
    with gov.flow.store.read() as session, session.begin():
        return [row.payload for row in session.scalars(
            select(OutboxEvent).where(OutboxEvent.mission_id == mission_id)
            .order_by(OutboxEvent.id))]


def unchanged(gov: Governance, send: Callable[[], httpx.Response]) -> httpx.Response:
    before = gov.snapshot()
    response = send()
    assert gov.snapshot() == before, "a status request changed the store"
    return response


def test_the_signed_status(gov: Governance) -> None:
    mission_id = gov.mission()
    sent = nonce()
    response = unchanged(gov, lambda: gov.status(mission_id, ERP, nonce_value=sent,
                                                 basic=DEMO_RS))
    header, claims = gov.verified(response)
    assert header["typ"] == STATUS_TYPE and header["alg"] == "ES256"
    assert header["kid"] in {key.kid for key in gov.flow.jwks()}
    record = gov.record(mission_id)
    assert claims == {
        "iss": ISSUER, "aud": ERP, "sub": DEMO_RS[0], "nonce": sent,
        "iat": claims["iat"], "exp": claims["iat"] + 60,
        "mission": {"id": mission_id, "origin": ISSUER},
        "state": "active", "version": record.version,
        "proposal_hash": record.proposal_hash, "authority_hash": record.authority_hash,
        "consent_rendering_hash": record.consent_rendering_hash,
        "policy_version": record.policy_version,
        "mission_expiry": record.mission_expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        # Only the entries of the audience asked (audience minimization).
        "authority_projection": [entry for entry in record.authority_set
                                 if entry["resource"] == ERP],
    }
    assert len(claims["authority_projection"]) == 1
    assert abs(claims["iat"] - gov.flow.now().timestamp()) < 5


@pytest.mark.parametrize(("auth", "audiences"), [
    ({"basic": DEMO_RS}, {ERP, MCP}),  # serves both APIs
    ({"client": KEY_RS}, {ERP}),  # serves the ERP API only, private_key_jwt
    ({"client": AGENT}, {ERP, MCP}),  # the Mission's own client sees all of it
    ({"basic": AGENT_SECRET}, {ERP, MCP}),
    ({"basic": SUBAGENT}, set()),  # a delegate-to-be serves nothing
])
def test_who_sees_what(gov: Governance, auth: dict[str, Any], audiences: set[str]) -> None:
    mission_id = gov.mission()
    for audience in (ERP, MCP, "https://elsewhere.example/api"):
        response = unchanged(gov, partial(gov.status, mission_id, audience, **auth))
        if audience in audiences:
            _, claims = gov.verified(response)
            assert claims["aud"] == audience
            assert [e["resource"] for e in claims["authority_projection"]] == [audience]
        else:
            assert response.status_code == 404, response.text


def test_unknown_and_unauthorized_are_indistinguishable(gov: Governance) -> None:
    unknown = "msn_" + "W" * 32
    erp_only = gov.mission(resources=(ERP,))
    both = gov.mission()
    for auth, mission_id, audience in (
        ({"client": KEY_RS}, both, MCP),  # a resource the caller does not serve
        ({"basic": DEMO_RS}, erp_only, MCP),  # a resource the Mission does not name
        ({"basic": SUBAGENT}, both, ERP),  # a caller that serves nothing
        ({"basic": AGENT_SECRET}, gov.mission(client_id="narrow-agent"), ERP),  # not its own
    ):
        key = nonce()
        answers = [unchanged(gov, partial(gov.status, m, audience, nonce_value=key, **auth))
                   for m in (unknown, mission_id)]
        assert answers[0].status_code == answers[1].status_code == 404
        assert answers[0].content == answers[1].content
        assert headers_of(answers[0]) == headers_of(answers[1])
        assert answers[0].json() == {"error": "not_found", "error_description": "no such Mission",
                                     "nonce": key}


def headers_of(response: httpx.Response) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in response.headers.items() if k != "x-request-id")


@pytest.mark.parametrize("state", [State.PENDING_APPROVAL, State.ACTIVE, State.SUSPENDED,
                                   State.REVOKED, State.COMPLETED, State.REJECTED])
def test_every_state_is_a_success(gov: Governance, state: State) -> None:
    mission_id = gov.mission(state=state)
    record = gov.record(mission_id)
    response = unchanged(gov, lambda: gov.status(mission_id, ERP, basic=DEMO_RS))
    _, claims = gov.verified(response)
    assert (claims["state"], claims["version"]) == (state.value, record.version)
    # A Mission never approved has no consent anchors: they are left out, never null.
    for anchor in ("proposal_hash", "authority_hash", "consent_rendering_hash"):
        assert claims.get(anchor) == getattr(record, anchor)
        assert claims.get(anchor, "absent") is not None


def test_lazy_expiry_is_persisted_with_its_event(gov: Governance) -> None:
    lapsing = gov.mission(lifetime=timedelta(seconds=2))
    pending = gov.mission(state=State.PENDING_APPROVAL)
    suspended = gov.mission(state=State.SUSPENDED, lifetime=timedelta(seconds=2))
    gov.flow.clock.advance(3)
    for mission_id in (lapsing, suspended):
        before = gov.record(mission_id)
        _, claims = gov.verified(gov.status(mission_id, MCP, basic=DEMO_RS))
        assert (claims["state"], claims["version"]) == ("expired", before.version + 1)
        after = gov.record(mission_id)
        assert (after.state, after.version) == (State.EXPIRED, before.version + 1)
        last = events(gov, mission_id)[-1]
        assert (last["state"], last["prior_state"], last["version"]) == (
            "expired", before.state.value, before.version + 1)
        # Asked again: the same answer, no second event.
        count = len(events(gov, mission_id))
        _, again = gov.verified(gov.status(mission_id, MCP, basic=DEMO_RS))
        assert (again["state"], again["version"]) == ("expired", before.version + 1)
        assert len(events(gov, mission_id)) == count
    # A pending Mission past the consent window (10 minutes) expires the same way.
    gov.flow.clock.advance(600)
    _, claims = gov.verified(gov.status(pending, ERP, client=AGENT))
    assert claims["state"] == "expired"
    assert events(gov, pending)[-1]["prior_state"] == "pending_approval"
    assert gov.record(pending).state is State.EXPIRED


def test_concurrent_status_requests_expire_a_mission_once(gov: Governance) -> None:
    mission_id = gov.mission(lifetime=timedelta(seconds=2))
    gov.flow.clock.advance(3)
    before = len(events(gov, mission_id))
    results = run_concurrently(8, lambda _: gov.status(mission_id, ERP, basic=DEMO_RS))
    answers = [r for r in results if not isinstance(r, BaseException)]
    assert len(answers) == 8, [r for r in results if isinstance(r, BaseException)][:1]
    versions = {(claims["state"], claims["version"])
                for claims in (gov.verified(r)[1] for r in answers)}
    assert versions == {("expired", gov.record(mission_id).version)}
    assert len(events(gov, mission_id)) == before + 1


def test_a_dpop_bound_token_asks_about_its_own_mission(gov: Governance) -> None:
    key = generate_key()
    grant = gov.flow.grant(dpop_key=key)
    token = grant.access_token

    def ask(mission_id: str, headers: dict[str, str], value: str | None = None
            ) -> httpx.Response:
        return gov.post(STATUS, {"mission": mission_id, "audience": MCP,
                                 "nonce": value or nonce()}, headers=headers)

    _, claims = gov.verified(ask(grant.mission_id, gov.token_headers(token, key, path=STATUS)))
    assert (claims["sub"], claims["aud"], claims["state"]) == (AGENT, MCP, "active")
    for headers, dpop_error in (
        (gov.token_headers(token, generate_key(), path=STATUS), "invalid_dpop_proof"),
        (gov.token_headers(token, key, path=STATUS, ath=None), "invalid_dpop_proof"),
        (gov.token_headers(token, key), "invalid_dpop_proof"),  # a proof for /lifecycle
        ({"Authorization": f"DPoP {token}"}, "invalid_dpop_proof"),
    ):
        response = unchanged(gov, partial(ask, grant.mission_id, headers))
        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
        assert f'error="{dpop_error}"' in response.headers["www-authenticate"]
    # Another Mission (of the same client) looks like an unknown one.
    other = gov.mission()
    key_nonce = nonce()
    answers = [ask(m, gov.token_headers(token, key, path=STATUS), key_nonce)
               for m in (other, "msn_" + "V" * 32)]
    assert answers[0].status_code == 404 and answers[0].content == answers[1].content


def test_unauthenticated_callers_are_invalid_client(gov: Governance) -> None:
    mission_id = gov.mission()
    form = {"mission": mission_id, "audience": ERP, "nonce": nonce()}
    for attempt in (
        lambda: gov.post(STATUS, form),
        lambda: gov.post(STATUS, form, basic=(DEMO_RS[0], "wrong")),
        # client_secret_post is not one of this endpoint's methods.
        lambda: gov.post(STATUS, {**form, "client_id": DEMO_RS[0],
                                  "client_secret": DEMO_RS[1]}),
        # A person's browser session is for the lifecycle endpoint only.
        lambda: gov.post(STATUS, form, user="dave"),
        lambda: gov.post(STATUS, form, headers={"Authorization": "Bearer abc"}),
    ):
        seq = last_audit_seq(gov.flow.engine)
        response = unchanged(gov, attempt)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
        # HTTP Basic is one of this endpoint's methods: the challenge names it.
        assert response.headers["www-authenticate"].startswith(f'Basic realm="{ISSUER}", DPoP ')
        assert response.json()["nonce"] == form["nonce"]
        assert refusals(gov.flow.engine, seq) == []


@pytest.mark.parametrize(("form", "why"), [
    ({"audience": None}, "audience"),
    ({"audience": "x" * 2049}, "audience"),
    ({"nonce": None}, "nonce"),
    ({"nonce": "a b"}, "nonce"),
    ({"mission": None}, "mission"),
    ({"mission": "msn_short"}, "mission"),
])
def test_malformed_requests_are_invalid_request(gov: Governance, form: dict[str, Any],
                                                why: str) -> None:
    base = {"mission": gov.mission(), "audience": ERP, "nonce": nonce()}
    seq = last_audit_seq(gov.flow.engine)
    response = unchanged(gov, lambda: gov.post(STATUS, {**base, **form}, basic=DEMO_RS))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert why in response.json()["error_description"]
    # Evidence of an authenticated caller's malformed request (decision O9).
    assert [r["event"] for r in refusals(gov.flow.engine, seq)] == ["mission_status.refused"]


def test_metadata_names_the_governance_endpoints(gov: Governance) -> None:
    metadata = gov.flow.client.get("/.well-known/oauth-authorization-server").json()
    assert metadata["mission_status_endpoint"] == f"{ISSUER}/mission/status"
    assert metadata["mission_lifecycle_endpoint"] == f"{ISSUER}/mission/lifecycle"
    assert metadata["mission_lifecycle_operations_supported"] == [
        "revoke", "suspend", "resume", "complete"]
    assert metadata["mission_status_endpoint_auth_methods_supported"] == [
        "client_secret_basic", "private_key_jwt", "dpop_bound_access_token"]
    assert metadata["mission_lifecycle_endpoint_auth_methods_supported"] == [
        "private_key_jwt", "dpop_bound_access_token"]
    assert metadata["mission_event_stream_endpoint"] == (
        f"{ISSUER}/.well-known/ssf-configuration")
    assert metadata["mission_max_stale_seconds"] == 300
    assert "ES256" in metadata["mission_status_signing_alg_values_supported"]


def test_status_counts_no_audit_record_and_no_derivation(gov: Governance) -> None:
    grant = gov.flow.grant()
    derivations = gov.flow.derivations(grant.mission_id)
    seq = last_audit_seq(gov.flow.engine)
    with gov.flow.store.read() as session, session.begin():
        total = session.scalar(select(func.count()).select_from(OutboxEvent))
    for _ in range(3):
        gov.verified(gov.status(grant.mission_id, ERP, basic=DEMO_RS))
    assert last_audit_seq(gov.flow.engine) == seq
    assert gov.flow.derivations(grant.mission_id) == derivations
    with gov.flow.store.read() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == total
