"""What a Mission-bound access token and the token response carry (RFC 9068, RFC 9396
section 7, PROFILE.md sections 5, 7 and 8, issuance digest 16.18-30), on SQLite and
PostgreSQL, checked against the stored Mission record."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from missionbound.mission.anchors import authority_hash, find_anchor_mismatch
from missionbound.mission.lifecycle import State
from tests.issuer.flow import (
    AGENT,
    ERP,
    ISSUER,
    MCP,
    Flow,
    Grant,
    audit_verifies,
    instant,
    mission_intent,
)
from tests.protocol.proofs import generate_key

CLAIMS = {"iss", "sub", "aud", "client_id", "iat", "exp", "jti", "authorization_details",
          "mission"}


def claims_of(flow: Flow, grant: Grant | dict[str, Any]) -> dict[str, Any]:
    token = grant.access_token if isinstance(grant, Grant) else grant["access_token"]
    header, claims = flow.decode(token)
    # RFC 9068 section 2.1: typ at+jwt; ES256 by default (PROFILE.md section 8); the key is
    # published at jwks_uri.
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    assert header["kid"] in {key["kid"] for key in flow.client.get("/jwks").json()["keys"]}
    return claims


def test_a_bearer_token_carries_the_mission_and_the_whole_authority_set(flow: Flow) -> None:
    grant = flow.grant()  # pushed for alice, approved by bob
    claims = claims_of(flow, grant)
    mission = flow.mission(grant.mission_id)
    assert set(claims) == CLAIMS  # no cnf (bearer), no act (not delegated), no scope
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "alice"
    assert claims["client_id"] == AGENT[0]
    assert claims["aud"] == [ERP, MCP]
    assert claims["authorization_details"] == mission.authority_set
    assert claims["mission"] == {"id": mission.mission_id, "origin": ISSUER,
                                 "authority_hash": mission.authority_hash}
    # PROFILE.md section 8: default lifetime 300 s, far inside this Mission's expiry.
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - flow.now().timestamp()) < 60
    # Issuance digest 16.25: the response echoes what the token carries.
    assert grant.body["token_type"] == "Bearer"
    assert grant.body["authorization_details"] == claims["authorization_details"]
    assert grant.body["mission_id"] == claims["mission"]["id"]
    assert 0 < grant.body["expires_in"] <= 300
    assert "scope" not in grant.body


def test_the_token_response_is_not_cached(flow: Flow) -> None:
    pushed, code = flow.approved_code()
    response = flow.redeem(code, pushed.pkce.verifier)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def test_the_record_names_subject_and_approver_and_its_anchors_verify(flow: Flow) -> None:
    pushed = flow.push_ok(login_hint="alice")
    query = flow.approve(pushed.request_uri, "bob")
    assert "code" in query
    mission = flow.mission_of(pushed.request_uri)
    assert mission.state is State.ACTIVE and mission.version == 2
    assert mission.subject is not None and mission.subject.as_dict() == {
        "iss": ISSUER, "sub": "alice"}
    assert mission.approver is not None and mission.approver.as_dict() == {
        "iss": ISSUER, "sub": "bob"}
    assert mission.origin == ISSUER
    # Issuance digest 16.18: at least 128 bits, URL-safe.
    assert re.fullmatch(r"msn_[A-Za-z0-9_-]{22,}", mission.mission_id)
    record = mission.as_dict()
    for anchor in ("proposal_hash", "consent_rendering_hash", "authority_hash"):
        assert str(record[anchor]).startswith("sha-256:"), anchor
    assert find_anchor_mismatch(record) is None
    assert record["authority_hash"] == authority_hash(ISSUER, mission.authority_set)
    assert record["consent_disclosure"]["approver"]["sub"] == "bob"
    assert record["approval_event_id"] == record["consent_disclosure"]["disclosure_id"]


def test_a_dpop_token_is_bound_to_the_proofs_key(flow: Flow) -> None:
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    claims = claims_of(flow, grant)
    assert claims["cnf"] == {"jkt": key.thumbprint()}
    assert grant.body["token_type"] == "DPoP"
    refreshed = flow.refresh(grant.refresh_token, dpop=flow.dpop(key))
    assert refreshed.status_code == 200
    again = claims_of(flow, refreshed.json())
    assert again["cnf"] == {"jkt": key.thumbprint()}
    assert again["jti"] != claims["jti"]


def test_no_token_outlives_its_mission(flow: Flow) -> None:
    # Issuance digest 16.26: a Mission expiring in 2 minutes caps the 300 s default.
    expiry = flow.now().replace(microsecond=0) + timedelta(minutes=2)
    grant = flow.grant(intent=mission_intent(flow.now(), mission_expiry=instant(expiry)))
    claims = claims_of(flow, grant)
    assert claims["exp"] == int(expiry.timestamp())
    assert flow.mission(grant.mission_id).mission_expiry == expiry
    assert grant.body["expires_in"] <= 120
    refreshed = flow.refresh(grant.refresh_token)
    assert refreshed.status_code == 200
    assert claims_of(flow, refreshed.json())["exp"] == int(expiry.timestamp())


def test_a_resource_narrows_the_token_to_one_audience(flow: Flow) -> None:
    # Issuance digest 16.27 (RFC 8707, RFC 9068 section 2.2: aud a single string).
    pushed, code = flow.approved_code()
    response = flow.redeem(code, pushed.pkce.verifier, resource=ERP)
    assert response.status_code == 200, response.text
    body = response.json()
    claims = claims_of(flow, body)
    mission = flow.mission(body["mission_id"])
    assert claims["aud"] == ERP
    assert claims["authorization_details"]
    assert all(entry["resource"] == ERP for entry in claims["authorization_details"])
    assert all(entry in mission.authority_set for entry in claims["authorization_details"])
    assert body["authorization_details"] == claims["authorization_details"]
    # The anchor is still that of the whole approved set.
    assert claims["mission"]["authority_hash"] == authority_hash(ISSUER, mission.authority_set)
    # The refresh token still carries the whole Mission: a refresh may ask for the other.
    other = flow.refresh(body["refresh_token"], resource=MCP)
    assert other.status_code == 200
    assert claims_of(flow, other.json())["aud"] == MCP


def test_a_scope_narrowed_mission_grants_only_that_scope(flow: Flow) -> None:
    # Issuance digest 16.15 and 16.30.
    grant = flow.grant(scope="invoices.read")
    claims = claims_of(flow, grant)
    assert [entry["actions"] for entry in claims["authorization_details"]] == [
        ["invoices.read"]]
    assert claims["aud"] == ERP


def test_issuance_left_a_verifiable_audit_log(flow: Flow) -> None:
    # Run last in the module.
    audit_verifies(flow.engine)


def test_scope_and_authorization_details_narrow_one_token(flow: Flow) -> None:
    # Issuance digest 6.4 / RFC 9396 section 6.2: a token request may ask for less.
    pushed, code = flow.approved_code()
    response = flow.redeem(code, pushed.pkce.verifier, scope="invoices.read")
    assert response.status_code == 200, response.text
    body = response.json()
    _, claims = flow.decode(body["access_token"])
    assert [e["actions"] for e in claims["authorization_details"]] == [["invoices.read"]]
    assert claims["aud"] == ERP
    assert body["authorization_details"] == claims["authorization_details"]

    asked = [{"type": "mission_resource_access", "resource": MCP, "actions": ["get_invoice"]}]
    refreshed = flow.refresh(body["refresh_token"], authorization_details=json.dumps(asked))
    assert refreshed.status_code == 200, refreshed.text
    _, claims = flow.decode(refreshed.json()["access_token"])
    assert claims["authorization_details"] == asked and claims["aud"] == MCP


def test_broader_authorization_details_at_the_token_endpoint_are_refused(flow: Flow) -> None:
    # Issuance digest 16.29: nothing issued, the code still redeemable.
    pushed, code = flow.approved_code()
    broader = [{"type": "mission_resource_access", "resource": MCP,
                "actions": ["send_remittance_email"]}]
    refused = flow.redeem(code, pushed.pkce.verifier,
                          authorization_details=json.dumps(broader))
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_authorization_details"
    assert flow.redeem(code, pushed.pkce.verifier).status_code == 200
