"""ID-JAG issuance at the origin AS (PROFILE.md section 11, issuance digest 6.6, 6.7 and 9.1;
docs/cross-domain.md), on SQLite and PostgreSQL: the grant's header and claims, its lifetime,
the audience-scoped authority, the DPoP binding, the derivation count, and every refusal
(nothing issued, nothing counted, nothing spent, one ``token.refused`` audit record)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc.jwk import Key
from sqlalchemy import select

from missionbound.mission.lifecycle import Event
from missionbound.store.models import AuditRecord, IssuedToken, RefreshTokenFamily
from tests.issuer.flow import (
    AGENT,
    ERP,
    ISSUER,
    MCP,
    NARROW,
    SUBAGENT,
    Flow,
    Grant,
    audit_verifies,
    instant,
    last_audit_seq,
    mission_intent,
    refusals,
    refused,
    snapshot,
)
from tests.issuer.id_jag_support import (
    ACCESS_TOKEN,
    ELSEWHERE_API,
    ELSEWHERE_RAS,
    ID_JAG,
    MCP_RAS,
    RAS,
    TOKEN_EXCHANGE,
    change,
    cross_domain_flow,
    decode_id_jag,
    request_id_jag,
)
from tests.protocol.proofs import generate_key
from tests.store.concurrency import run_concurrently

TOKEN_REFUSED = "token.refused"
CLAIMS = {"iss", "sub", "aud", "client_id", "iat", "exp", "jti", "cnf",
          "authorization_details", "mission"}


@pytest.fixture(scope="module")
def flow(flow_database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    yield from cross_domain_flow(flow_database_url, tmp_path_factory)


def bound_grant(flow: Flow, **push: Any) -> tuple[Grant, Key]:
    """A Mission and its DPoP-bound refresh token."""
    key = generate_key()
    return flow.grant(dpop_key=key, **push), key


def issued(flow: Flow, response: httpx.Response) -> tuple[dict[str, Any], dict[str, Any]]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body, decode_id_jag(flow, body["access_token"])[1]


def refused_id_jag(flow: Flow, send: Callable[[], httpx.Response], error: str, *,
                   mission_id: str | None, status: int = 400) -> dict[str, Any]:
    """Refused with ``error``, nothing changed, one ``token.refused`` record naming the
    Mission (or none, when the request named no Mission of this client)."""
    seq = last_audit_seq(flow.engine)
    response = refused(flow, send, status=status, error=error, audited=TOKEN_REFUSED)
    assert response.headers["cache-control"] == "no-store"
    records = refusals(flow.engine, seq)
    assert [r["mission_id"] for r in records] == [mission_id]
    assert records[0]["actor"] == {"client_id": AGENT[0]}
    body: dict[str, Any] = response.json()
    return body


def issued_row(flow: Flow, jti: str) -> IssuedToken:
    with flow.store.read() as session, session.begin():
        row = session.get(IssuedToken, jti)
        assert row is not None
        session.expunge(row)
        return row


# -- the grant -------------------------------------------------------------------------------


def test_the_id_jag_header_and_claims(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    mission = flow.mission(grant.mission_id)
    before = flow.derivations(grant.mission_id)
    response = request_id_jag(flow, grant.refresh_token, key=key)
    body, _ = issued(flow, response)
    header, claims = decode_id_jag(flow, body["access_token"])
    # The draft's explicit type, signed with a key published at /jwks (decode checked it).
    assert header["typ"] == "oauth-id-jag+jwt" and header["alg"] == "ES256"
    assert header["kid"] in {k["kid"] for k in flow.client.get("/jwks").json()["keys"]}
    assert set(claims) == CLAIMS  # no act: the grant enters the target domain at depth 0
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "alice"
    assert claims["aud"] == RAS
    assert claims["client_id"] == AGENT[0]
    assert abs(claims["iat"] - flow.now().timestamp()) < 60
    assert claims["exp"] - claims["iat"] == 300
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 22
    assert claims["cnf"] == {"jkt": key.thumbprint()}
    assert claims["mission"] == {"id": mission.mission_id, "origin": ISSUER,
                                 "authority_hash": mission.authority_hash}
    assert claims["authorization_details"] == [
        entry for entry in mission.authority_set if entry["resource"] == ERP]
    # RFC 8693 section 2.2.1: not an access token.
    assert body["issued_token_type"] == ID_JAG
    assert body["token_type"] == "N_A"
    assert 290 <= body["expires_in"] <= 300
    assert body["authorization_details"] == claims["authorization_details"]
    assert "refresh_token" not in body
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    # One derivation, recorded and audited.
    assert flow.derivations(grant.mission_id) == before + 1
    row = issued_row(flow, claims["jti"])
    assert (row.kind, row.aud, row.mission_id, row.client_id) == (
        "id_jag", RAS, mission.mission_id, AGENT[0])
    assert int(row.expires_at.timestamp()) == claims["exp"]
    with flow.store.read() as session, session.begin():
        record = session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())
                                 .limit(1)).one()
        assert record.event == "token.issued" and record.mission_id == mission.mission_id
        assert record.data == {
            "grant_type": TOKEN_EXCHANGE, "issued_token_type": ID_JAG,
            "jti": claims["jti"], "aud": RAS, "exp": claims["exp"],
            "cnf_jkt": key.thumbprint(), "resources": [ERP], "derivation": before + 1}
        assert record.authority_hash == mission.authority_hash


def test_the_refresh_token_is_read_not_rotated(flow: Flow) -> None:
    # Decision J2: the subject token keeps working, for refresh and for further ID-JAGs.
    grant, key = bound_grant(flow)
    first = issued(flow, request_id_jag(flow, grant.refresh_token, key=key))[1]
    second = issued(flow, request_id_jag(flow, grant.refresh_token, key=key,
                                         audiences=(MCP_RAS,)))[1]
    assert first["jti"] != second["jti"]
    assert second["aud"] == MCP_RAS
    refreshed = flow.refresh(grant.refresh_token, dpop=flow.dpop(key))
    assert refreshed.status_code == 200, refreshed.text
    # The successor works as a subject token too.
    issued(flow, request_id_jag(flow, refreshed.json()["refresh_token"], key=key))


def test_an_id_jag_never_outlives_its_mission(flow: Flow) -> None:
    expiry = flow.now().replace(microsecond=0) + timedelta(minutes=2)
    grant, key = bound_grant(flow, intent=mission_intent(flow.now(),
                                                         mission_expiry=instant(expiry)))
    body, claims = issued(flow, request_id_jag(flow, grant.refresh_token, key=key))
    assert claims["exp"] == int(expiry.timestamp())
    assert claims["exp"] - claims["iat"] <= 120
    assert body["expires_in"] <= 120


def test_only_the_audiences_entries_are_disclosed(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    mission = flow.mission(grant.mission_id)
    assert {entry["resource"] for entry in mission.authority_set} == {ERP, MCP}
    _, claims = issued(flow, request_id_jag(flow, grant.refresh_token, key=key))
    assert claims["authorization_details"]
    assert all(entry["resource"] == ERP for entry in claims["authorization_details"])
    # Not anywhere in the grant: another audience's entries are never disclosed.
    payload = json.dumps(claims)
    assert MCP not in payload
    for entry in mission.authority_set:
        if entry["resource"] == MCP:
            for action in entry["actions"]:
                assert action not in payload
    other = issued(flow, request_id_jag(flow, grant.refresh_token, key=key,
                                        audiences=(MCP_RAS,)))[1]
    assert [e["resource"] for e in other["authorization_details"]] == [
        e["resource"] for e in mission.authority_set if e["resource"] == MCP]
    assert other["mission"] == claims["mission"]  # the anchor is unchanged


def test_the_grant_is_bound_to_the_proofs_key(flow: Flow) -> None:
    # A refresh token not bound to a key: the ID-JAG is bound to whichever key the proof
    # shows (issuance digest 6.6: a cross-domain grant MUST be sender-constrained).
    grant = flow.grant()
    key = generate_key()
    claims = issued(flow, request_id_jag(flow, grant.refresh_token, key=key))[1]
    assert claims["cnf"] == {"jkt": key.thumbprint()}


def test_narrowing_within_the_audiences_entries(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    mission = flow.mission(grant.mission_id)
    scoped = issued(flow, request_id_jag(flow, grant.refresh_token, key=key,
                                         scope="invoices.read"))[1]
    # The entry holding the action, cut down to it; its delegation policy travels with it
    # (issuance digest 9.2 item 6: the Resource AS enforces it from depth 0).
    [holder] = [e for e in mission.authority_set
                if e["resource"] == ERP and "invoices.read" in e["actions"]]
    assert scoped["authorization_details"] == [{**holder, "actions": ["invoices.read"]}]
    asked = [{"type": "mission_resource_access", "resource": ERP,
              "actions": ["invoices.read"]}]
    detailed = issued(flow, request_id_jag(flow, grant.refresh_token, key=key, resource=ERP,
                                           authorization_details=json.dumps(asked)))[1]
    assert detailed["authorization_details"] == asked


def test_every_id_jag_counts_one_derivation_up_to_the_cap(flow: Flow) -> None:
    context = {"max_derivations": 3, "max_value": {"amount": "500.00", "currency": "USD"},
               "vendors": ["acme"]}
    grant, key = bound_grant(flow, intent=mission_intent(flow.now(), context=context))
    assert flow.derivations(grant.mission_id) == 1  # the code redemption
    issued(flow, request_id_jag(flow, grant.refresh_token, key=key))
    issued(flow, request_id_jag(flow, grant.refresh_token, key=key, audiences=(MCP_RAS,)))
    assert flow.derivations(grant.mission_id) == 3
    body = refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key),
                          "invalid_grant", mission_id=grant.mission_id)
    assert body["mission_state"] == "active"
    assert body["mission_error"] == "derivations_exhausted"
    assert flow.derivations(grant.mission_id) == 3


# -- refusals: the subject token -------------------------------------------------------------


def test_an_access_token_as_subject_is_invalid_request(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    refused_id_jag(flow, lambda: request_id_jag(
        flow, grant.access_token, key=key, subject_token_type=ACCESS_TOKEN),
        "invalid_request", mission_id=None)
    # Labelled as a refresh token, it is still a JWT: the wrong subject.
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.access_token, key=key),
                   "invalid_request", mission_id=None)


@pytest.mark.parametrize("subject_token_type", [
    ACCESS_TOKEN,
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "refresh_token",
])
def test_a_subject_token_type_other_than_refresh_token_is_invalid_request(
        flow: Flow, subject_token_type: str) -> None:
    grant, key = bound_grant(flow)
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key,
                                                subject_token_type=subject_token_type),
                   "invalid_request", mission_id=None)
    issued(flow, request_id_jag(flow, grant.refresh_token, key=key))  # nothing was spent


def test_an_actor_token_is_invalid_request(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    refused_id_jag(flow, lambda: request_id_jag(
        flow, grant.refresh_token, key=key, actor_token=grant.access_token,
        actor_token_type=ACCESS_TOKEN), "invalid_request", mission_id=None)


def test_an_unknown_refresh_token_is_invalid_grant(flow: Flow) -> None:
    refused_id_jag(flow, lambda: request_id_jag(flow, "never-issued", key=generate_key()),
                   "invalid_grant", mission_id=None)


@pytest.mark.parametrize("auth", [SUBAGENT, NARROW], ids=["subagent", "narrow"])
def test_another_clients_refresh_token_is_invalid_grant(
        flow: Flow, auth: tuple[str, str]) -> None:
    grant, key = bound_grant(flow)
    seq = last_audit_seq(flow.engine)
    refused(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key, auth=auth),
            status=400, error="invalid_grant", audited=TOKEN_REFUSED)
    # The refusal names no Mission: the token is not this client's.
    assert [(r["mission_id"], r["actor"]) for r in refusals(flow.engine, seq)] == [
        (None, {"client_id": auth[0]})]
    issued(flow, request_id_jag(flow, grant.refresh_token, key=key))


def test_a_revoked_refresh_token_is_invalid_grant(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    revoked = flow.client.post("/revoke", data={"token": grant.refresh_token}, auth=AGENT)
    assert revoked.status_code == 200, revoked.text
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key),
                   "invalid_grant", mission_id=grant.mission_id)


def test_an_expired_refresh_token_of_an_expired_mission_says_so(flow: Flow) -> None:
    expiry = flow.now().replace(microsecond=0) + timedelta(minutes=1)
    grant, key = bound_grant(flow, intent=mission_intent(flow.now(),
                                                         mission_expiry=instant(expiry)))
    flow.clock.advance(61)
    response = request_id_jag(flow, grant.refresh_token, key=key)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["mission_state"] == "expired"


def test_a_rotated_refresh_token_is_a_replay_that_revokes_its_grant(flow: Flow) -> None:
    # As at the refresh grant (RFC 9700 section 4.14.2): a rotated token presented again
    # is evidence of theft, whatever grant it is presented to.
    grant, key = bound_grant(flow)
    refreshed = flow.refresh(grant.refresh_token, dpop=flow.dpop(key))
    assert refreshed.status_code == 200, refreshed.text
    successor = refreshed.json()["refresh_token"]
    before = flow.derivations(grant.mission_id)
    seq = last_audit_seq(flow.engine)
    replay = request_id_jag(flow, grant.refresh_token, key=key)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    records = refusals(flow.engine, seq)
    assert [(r["event"], r["mission_id"]) for r in records] == [
        (TOKEN_REFUSED, grant.mission_id)]
    assert flow.derivations(grant.mission_id) == before
    with flow.store.read() as session, session.begin():
        families = session.scalars(select(RefreshTokenFamily).where(
            RefreshTokenFamily.mission_id == grant.mission_id)).all()
        assert families and all(family.revoked_at is not None for family in families)
    refused_id_jag(flow, lambda: request_id_jag(flow, successor, key=key),
                   "invalid_grant", mission_id=grant.mission_id)


# -- refusals: audience, DPoP, narrowing -----------------------------------------------------


@pytest.mark.parametrize("audiences", [
    (), ("https://ras.unknown.test",), (RAS, MCP_RAS), (RAS, RAS), (ISSUER,), (ERP,),
], ids=["missing", "unknown", "two", "repeated", "the-origin", "a-resource"])
def test_one_configured_audience_or_invalid_target(
        flow: Flow, audiences: tuple[str, ...]) -> None:
    grant, key = bound_grant(flow)
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key,
                                                audiences=audiences),
                   "invalid_target", mission_id=grant.mission_id)
    issued(flow, request_id_jag(flow, grant.refresh_token, key=key))


def test_a_resource_as_the_mission_grants_nothing_at_is_invalid_target(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key,
                                                audiences=(ELSEWHERE_RAS,)),
                   "invalid_target", mission_id=grant.mission_id)
    # A Mission scoped to the ERP API has nothing for the MCP server's Resource AS.
    erp_only, erp_key = bound_grant(flow, scope="invoices.read")
    refused_id_jag(flow, lambda: request_id_jag(flow, erp_only.refresh_token, key=erp_key,
                                                audiences=(MCP_RAS,)),
                   "invalid_target", mission_id=erp_only.mission_id)


def test_no_dpop_proof_no_id_jag(flow: Flow) -> None:
    grant = flow.grant()  # even for a refresh token bound to no key
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=None),
                   "invalid_dpop_proof", mission_id=grant.mission_id)


def test_a_bound_refresh_token_needs_a_proof_of_its_key(flow: Flow) -> None:
    grant, _ = bound_grant(flow)
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token,
                                                key=generate_key()),
                   "invalid_dpop_proof", mission_id=grant.mission_id)


def test_a_proof_for_another_endpoint_is_refused(flow: Flow) -> None:
    grant, key = bound_grant(flow)

    def send() -> httpx.Response:
        form = {"grant_type": TOKEN_EXCHANGE, "requested_token_type": ID_JAG,
                "subject_token": grant.refresh_token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
                "audience": RAS}
        return flow.client.post("/token", data=form, auth=AGENT,
                                headers={"DPoP": flow.dpop(key, path="/par")})

    refused_id_jag(flow, send, "invalid_dpop_proof", mission_id=grant.mission_id)


@pytest.mark.parametrize(("params", "error"), [
    ({"resource": MCP}, "invalid_target"),
    ({"resource": ELSEWHERE_API}, "invalid_target"),
    ({"scope": "list_invoices get_invoice"}, "invalid_scope"),
    ({"authorization_details": json.dumps(
        [{"type": "mission_resource_access", "resource": MCP, "actions": ["get_invoice"]}])},
     "invalid_authorization_details"),
    ({"authorization_details": json.dumps(
        [{"type": "mission_resource_access", "resource": ERP,
          "actions": ["invoices.read", "journal-entries.write"]}])},
     "invalid_authorization_details"),
    ({"authorization_details": "[{"}, "invalid_request"),
], ids=["other-audiences-resource", "ungranted-resource", "other-audiences-scope",
        "other-audiences-entry", "broader-entry", "malformed"])
def test_narrowing_outside_the_audiences_entries_is_refused(
        flow: Flow, params: dict[str, str], error: str) -> None:
    grant, key = bound_grant(flow)
    refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key,
                                                **params),
                   error, mission_id=None if error == "invalid_request" else grant.mission_id)


# -- refusals: the Mission -------------------------------------------------------------------


@pytest.mark.parametrize(("event", "state"), [(Event.REVOKE, "revoked"),
                                              (Event.SUSPEND, "suspended"),
                                              (Event.COMPLETE, "completed")])
def test_a_mission_no_longer_active_gets_no_id_jag(flow: Flow, event: Event,
                                                   state: str) -> None:
    grant, key = bound_grant(flow)
    issued(flow, request_id_jag(flow, grant.refresh_token, key=key))
    change(flow, grant.mission_id, event)
    body = refused_id_jag(flow, lambda: request_id_jag(flow, grant.refresh_token, key=key),
                          "invalid_grant", mission_id=grant.mission_id)
    assert body["mission_state"] == state
    assert body["mission_error"] == f"mission_{state}"


def test_a_resumed_mission_gets_id_jags_again(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    change(flow, grant.mission_id, Event.SUSPEND)
    assert request_id_jag(flow, grant.refresh_token, key=key).status_code == 400
    change(flow, grant.mission_id, Event.RESUME)
    issued(flow, request_id_jag(flow, grant.refresh_token, key=key))


# -- under concurrency --------------------------------------------------------------------------


def racing_id_jags(flow: Flow, grant: Grant, key: Key, count: int,
                   also: Callable[[], None] | None = None) -> list[httpx.Response]:
    """``count`` ID-JAG requests for one refresh token at once (their proofs signed first),
    plus ``also`` in one more thread; every thread got a clean answer."""
    proofs = [flow.dpop(key) for _ in range(count)]

    def work(index: int) -> httpx.Response | None:
        if index == count:
            assert also is not None
            also()
            return None
        return request_id_jag(flow, grant.refresh_token, key=key, proof=proofs[index])

    results = run_concurrently(count + (also is not None), work)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:1]
    answered = [r for r in results if r is not None and not isinstance(r, BaseException)]
    assert all(r.status_code < 500 for r in answered), [r.text for r in answered][:1]
    return answered


def mission_records(flow: Flow, mission_id: str) -> list[AuditRecord]:
    with flow.store.read() as session, session.begin():
        found = list(session.scalars(select(AuditRecord).where(
            AuditRecord.mission_id == mission_id).order_by(AuditRecord.seq)))
        session.expunge_all()
        return found


def test_racing_requests_never_pass_the_cap(flow: Flow) -> None:
    # The gate counts under the Mission lock: of 12 racers, exactly the 4 the cap leaves win.
    context = {"max_derivations": 5, "max_value": {"amount": "500.00", "currency": "USD"},
               "vendors": ["acme"]}
    grant, key = bound_grant(flow, intent=mission_intent(flow.now(), context=context))
    answered = racing_id_jags(flow, grant, key, 12)
    won = [r for r in answered if r.status_code == 200]
    assert len(won) == 4
    assert {(r.json()["error"], r.json()["mission_error"])
            for r in answered if r.status_code != 200} == {
        ("invalid_grant", "derivations_exhausted")}
    assert flow.derivations(grant.mission_id) == 5
    assert len({decode_id_jag(flow, r.json()["access_token"])[1]["jti"] for r in won}) == 4


def test_a_revocation_committed_first_always_wins(flow: Flow) -> None:
    grant, key = bound_grant(flow)
    answered = racing_id_jags(flow, grant, key, 10,
                              also=lambda: change(flow, grant.mission_id, Event.REVOKE))
    won = [r for r in answered if r.status_code == 200]
    lost = [r.json() for r in answered if r.status_code != 200]
    assert all((body["error"], body["mission_state"]) == ("invalid_grant", "revoked")
               for body in lost)
    records = mission_records(flow, grant.mission_id)
    [revoked_at] = [r.seq for r in records if r.event == "mission.transition"
                    and "revoke" in json.dumps(r.data)]
    issued_seqs = [r.seq for r in records if r.event == "token.issued"]
    # The code redemption and every ID-JAG that won: all committed before the revocation.
    assert len(issued_seqs) == 1 + len(won)
    assert all(seq < revoked_at for seq in issued_seqs)
    assert flow.derivations(grant.mission_id) == 1 + len(won)


def test_refusals_change_nothing_and_the_log_verifies(flow: Flow) -> None:
    # Run last in the module: every issuance and refusal above left a verifiable chain.
    before = snapshot(flow.engine)
    assert before["issued_tokens"]
    audit_verifies(flow.engine)
