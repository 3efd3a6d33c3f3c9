"""Every refusal at the token endpoint (RFC 6749 section 5.2, RFC 7636, RFC 9449, RFC 8707,
PROFILE.md section 8, issuance digest 7.3 and 16.23-36), on SQLite and PostgreSQL.

A refused request issues nothing, counts no derivation and spends nothing (the code or
refresh token it presented still works afterwards), except where the spec says a refusal
must destroy something: a replayed code or rotated refresh token revokes its whole grant.
Each refusal of an authenticated client leaves a ``token.refused`` audit record.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc.jwk import Key
from sqlalchemy import select

from missionbound.mission.lifecycle import Event, Role, State
from missionbound.store.lifecycle import transition
from missionbound.store.models import IssuedToken, RefreshTokenFamily
from tests.issuer.flow import (
    AGENT,
    ERP,
    MCP,
    NARROW,
    REDIRECT_URI,
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
from tests.protocol.proofs import generate_key

TOKEN_REFUSED = "token.refused"


def refused_at_token(flow: Flow, send: Callable[[], httpx.Response], error: str, *,
                     status: int = 400, audited: str | None = TOKEN_REFUSED,
                     mission_id: str | None = None) -> dict[str, Any]:
    """Refused, nothing changed, audited (naming the Mission when the grant named one)."""
    seq = last_audit_seq(flow.engine)
    response = refused(flow, send, status=status, error=error, audited=audited)
    assert response.headers["cache-control"] == "no-store"
    if audited is not None and mission_id is not None:
        assert [r["mission_id"] for r in refusals(flow.engine, seq)] == [mission_id]
    body: dict[str, Any] = response.json()
    return body


def access_jti(flow: Flow, access_token: str) -> str:
    return str(flow.decode(access_token)[1]["jti"])


def issued_token(flow: Flow, jti: str) -> IssuedToken:
    with flow.store.read() as session, session.begin():
        row = session.get(IssuedToken, jti)
        assert row is not None
        return row


def families_of(flow: Flow, mission_id: str) -> list[RefreshTokenFamily]:
    with flow.store.read() as session, session.begin():
        return list(session.scalars(select(RefreshTokenFamily)
                                    .where(RefreshTokenFamily.mission_id == mission_id)))


def change(flow: Flow, mission_id: str, event: Event) -> None:
    """An administrator's lifecycle event, straight in the store."""
    with flow.store.begin() as session:
        transition(session, mission_id, event, roles={Role.ADMIN},
                   actor={"role": "admin", "sub": "bob"}, reason="test", now=flow.now(),
                   policy=flow.issuer.lifecycle_policy)


# -- the authorization code (RFC 6749 section 4.1.3, RFC 7636 section 4.6) -------------------


def test_a_replayed_code_revokes_what_its_first_redemption_issued(flow: Flow) -> None:
    pushed, code = flow.approved_code()
    first = flow.redeem(code, pushed.pkce.verifier)
    assert first.status_code == 200, first.text
    issued = first.json()
    mission_id = issued["mission_id"]
    seq = last_audit_seq(flow.engine)
    replay = flow.redeem(code, pushed.pkce.verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # RFC 6749 section 4.1.2: the tokens the code produced are revoked...
    assert issued_token(flow, access_jti(flow, issued["access_token"])).revoked_at is not None
    assert all(family.revoked_at is not None for family in families_of(flow, mission_id))
    refreshed = flow.refresh(issued["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    # ... nothing new was derived, and the replay is evidence.
    assert flow.derivations(mission_id) == 1
    records = refusals(flow.engine, seq)
    assert records[0]["event"] == TOKEN_REFUSED
    assert records[0]["data"]["error"] == "invalid_grant"
    assert records[0]["mission_id"] == mission_id


@pytest.mark.parametrize("verifier", ["x" * 43, "y" * 128])
def test_a_wrong_code_verifier_is_invalid_grant_and_spends_nothing(
        flow: Flow, verifier: str) -> None:
    pushed, code = flow.approved_code()
    mission_id = flow.mission_of(pushed.request_uri).mission_id
    refused_at_token(flow, lambda: flow.redeem(code, verifier), "invalid_grant",
                     mission_id=mission_id)
    # The failed attempt rolled back: the code still redeems, once.
    assert flow.redeem(code, pushed.pkce.verifier).status_code == 200


@pytest.mark.parametrize("verifier", [None, "", "short", "x" * 129, "x" * 42 + "!"],
                         ids=["missing", "empty", "short", "long", "bad-character"])
def test_a_missing_or_malformed_code_verifier_is_refused(
        flow: Flow, verifier: str | None) -> None:
    # Authlib answers invalid_request (RFC 6749 section 5.2: a required parameter is missing
    # or malformed); the issuance digest (16.23) expects invalid_grant for a missing one.
    pushed, code = flow.approved_code()
    refused_at_token(flow, lambda: flow.redeem(code, verifier), "invalid_request")
    assert flow.redeem(code, pushed.pkce.verifier).status_code == 200


@pytest.mark.parametrize("redirect_uri", [None, REDIRECT_URI + "/",
                                          "http://127.0.0.1:8766/callback"])
def test_a_redirect_uri_other_than_the_pushed_one_is_invalid_grant(
        flow: Flow, redirect_uri: str | None) -> None:
    pushed, code = flow.approved_code()
    refused_at_token(flow, lambda: flow.redeem(code, pushed.pkce.verifier,
                                               redirect_uri=redirect_uri), "invalid_grant")
    assert flow.redeem(code, pushed.pkce.verifier).status_code == 200


@pytest.mark.parametrize("auth", [SUBAGENT, NARROW], ids=["subagent", "narrow"])
def test_another_clients_code_is_invalid_grant(flow: Flow, auth: tuple[str, str]) -> None:
    pushed, code = flow.approved_code()
    refused_at_token(flow, lambda: flow.redeem(code, pushed.pkce.verifier, auth=auth),
                     "invalid_grant")
    assert flow.redeem(code, pushed.pkce.verifier).status_code == 200


def test_an_unknown_code_is_invalid_grant(flow: Flow) -> None:
    refused_at_token(flow, lambda: flow.redeem("never-issued", "x" * 43), "invalid_grant")


def test_a_missing_code_is_invalid_request(flow: Flow) -> None:
    refused_at_token(flow, lambda: flow.token({"grant_type": "authorization_code",
                                               "redirect_uri": REDIRECT_URI,
                                               "code_verifier": "x" * 43}),
                     "invalid_request")


def test_an_expired_code_is_invalid_grant(flow: Flow) -> None:
    pushed, code = flow.approved_code()
    flow.clock.advance(61)  # codes live 60 s
    body = refused_at_token(flow, lambda: flow.redeem(code, pushed.pkce.verifier),
                            "invalid_grant")
    assert "expired" in body["error_description"]


# -- client authentication and grant types --------------------------------------------------


def test_no_client_authentication_is_invalid_client(flow: Flow) -> None:
    pushed, code = flow.approved_code()
    refused_at_token(flow, lambda: flow.redeem(code, pushed.pkce.verifier, auth=None,
                                               client_id=AGENT[0]),
                     "invalid_client", status=401, audited=None)
    refused_at_token(
        flow, lambda: flow.redeem(code, pushed.pkce.verifier, auth=(AGENT[0], "wrong")),
        "invalid_client", status=401, audited=None)
    assert flow.redeem(code, pushed.pkce.verifier).status_code == 200


@pytest.mark.parametrize("grant_type", ["password", "client_credentials", "implicit",
                                        "urn:ietf:params:oauth:grant-type:device_code", None])
def test_an_unsupported_grant_type_is_refused(flow: Flow, grant_type: str | None) -> None:
    # Refused before the client is authenticated (Authlib picks the grant first): not
    # audited.
    data = {"grant_type": grant_type} if grant_type else {}
    refused_at_token(flow, lambda: flow.token({**data, "username": "alice"}),
                     "unsupported_grant_type", audited=None)


def test_a_json_body_is_refused(flow: Flow) -> None:
    refused_at_token(flow, lambda: flow.client.post(
        "/token", json={"grant_type": "refresh_token"}, auth=AGENT), "invalid_request",
        audited=None)


# -- refresh tokens (PROFILE.md section 8, RFC 9700 section 4.14.2) -----------------------------


def test_a_reused_refresh_token_revokes_its_family(flow: Flow) -> None:
    grant = flow.grant()
    rotated = flow.refresh(grant.refresh_token)
    assert rotated.status_code == 200, rotated.text
    successor = rotated.json()
    reuse = flow.refresh(grant.refresh_token)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # The successor dies with the family, and every access token of the grant with it.
    after = flow.refresh(successor["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    for token in (grant.access_token, successor["access_token"]):
        assert issued_token(flow, access_jti(flow, token)).revoked_at is not None
    assert flow.derivations(grant.mission_id) == 2


def test_another_clients_refresh_token_is_invalid_grant(flow: Flow) -> None:
    grant = flow.grant()
    for auth in (SUBAGENT, NARROW):
        refused_at_token(flow, lambda auth=auth: flow.refresh(grant.refresh_token, auth=auth),
                         "invalid_grant")
    # It was neither rotated nor revoked.
    assert flow.refresh(grant.refresh_token).status_code == 200


def test_an_unknown_or_missing_refresh_token_is_refused(flow: Flow) -> None:
    refused_at_token(flow, lambda: flow.refresh("never-issued"), "invalid_grant")
    refused_at_token(flow, lambda: flow.token({"grant_type": "refresh_token"}),
                     "invalid_request")


# -- DPoP binding (RFC 9449 sections 5 and 10) ------------------------------------------------


@pytest.mark.parametrize("binding", ["dpop_jkt", "proof-at-par"])
def test_a_dpop_bound_code_needs_a_proof_of_its_key(flow: Flow, binding: str) -> None:
    key = generate_key()
    push: dict[str, Any] = ({"dpop_jkt": key.thumbprint()} if binding == "dpop_jkt"
                            else {"dpop": flow.dpop(key, path="/par")})
    pushed, code = flow.approved_code(**push)
    verifier = pushed.pkce.verifier
    refused_at_token(flow, lambda: flow.redeem(code, verifier), "invalid_dpop_proof")
    refused_at_token(flow, lambda: flow.redeem(code, verifier,
                                               dpop=flow.dpop(generate_key())),
                     "invalid_dpop_proof")
    response = flow.redeem(code, verifier, dpop=flow.dpop(key))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"


def test_a_dpop_bound_refresh_token_needs_a_proof_of_its_key(flow: Flow) -> None:
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    refused_at_token(flow, lambda: flow.refresh(grant.refresh_token), "invalid_dpop_proof",
                     mission_id=grant.mission_id)
    refused_at_token(flow, lambda: flow.refresh(grant.refresh_token,
                                                dpop=flow.dpop(generate_key())),
                     "invalid_dpop_proof", mission_id=grant.mission_id)
    proof = flow.dpop(key)
    assert flow.refresh(grant.refresh_token, dpop=proof).status_code == 200


def test_a_replayed_dpop_proof_is_refused(flow: Flow) -> None:
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    proof = flow.dpop(key)
    rotated = flow.refresh(grant.refresh_token, dpop=proof)
    assert rotated.status_code == 200
    successor = rotated.json()["refresh_token"]
    refused_at_token(flow, lambda: flow.refresh(successor, dpop=proof), "invalid_dpop_proof")
    assert flow.refresh(successor, dpop=flow.dpop(key)).status_code == 200


# -- resource indicators (RFC 8707 section 2) ------------------------------------------------


@pytest.mark.parametrize("resource", ["https://other.example.org", f"{ERP}/invoices"])
def test_a_resource_outside_the_authority_is_invalid_target(
        flow: Flow, resource: str) -> None:
    pushed, code = flow.approved_code(intent=mission_intent(flow.now(), resources=[ERP]))
    refused_at_token(flow, lambda: flow.redeem(code, pushed.pkce.verifier, resource=resource),
                     "invalid_target")
    response = flow.redeem(code, pushed.pkce.verifier)
    assert response.status_code == 200
    refresh_token = response.json()["refresh_token"]
    refused_at_token(flow, lambda: flow.refresh(refresh_token, resource=MCP),
                     "invalid_target")
    assert flow.refresh(refresh_token, resource=ERP).status_code == 200


# -- the derivation gate (PROFILE.md section 8, issuance digest 16.31-35) ---------------------


def test_a_revoked_mission_derives_nothing(flow: Flow) -> None:
    grant = flow.grant()
    change(flow, grant.mission_id, Event.REVOKE)
    body = refused_at_token(flow, lambda: flow.refresh(grant.refresh_token), "invalid_grant",
                            mission_id=grant.mission_id)
    assert body["mission_state"] == "revoked"
    assert body["mission_error"] == "mission_revoked"


def test_a_code_of_a_mission_revoked_before_redemption_derives_nothing(flow: Flow) -> None:
    pushed, code = flow.approved_code()
    mission_id = flow.mission_of(pushed.request_uri).mission_id
    change(flow, mission_id, Event.REVOKE)
    body = refused_at_token(flow, lambda: flow.redeem(code, pushed.pkce.verifier),
                            "invalid_grant", mission_id=mission_id)
    assert body["mission_state"] == "revoked"
    assert flow.derivations(mission_id) == 0


def test_a_suspended_mission_derives_nothing_until_resumed(flow: Flow) -> None:
    grant = flow.grant()
    change(flow, grant.mission_id, Event.SUSPEND)
    body = refused_at_token(flow, lambda: flow.refresh(grant.refresh_token), "invalid_grant",
                            mission_id=grant.mission_id)
    assert body["mission_state"] == "suspended"
    change(flow, grant.mission_id, Event.RESUME)
    assert flow.refresh(grant.refresh_token).status_code == 200


def test_an_expired_mission_derives_nothing_and_the_expiry_is_recorded(flow: Flow) -> None:
    expiry = flow.now().replace(microsecond=0) + timedelta(minutes=2)
    grant = flow.grant(intent=mission_intent(flow.now(), mission_expiry=instant(expiry)))
    flow.clock.advance(121)
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    response = flow.refresh(grant.refresh_token)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_grant" and body.get("mission_state") == "expired", body
    assert body["mission_error"] == "mission_expired"
    # Nothing issued or spent; the clock's verdict alone was persisted (issuance digest 16.32).
    after = snapshot(flow.engine)
    for table in ("authorization_codes", "refresh_families", "refresh_tokens",
                  "issued_tokens", "derivation_counters"):
        assert after[table] == before[table], table
    assert flow.mission(grant.mission_id).state is State.EXPIRED
    assert [r["event"] for r in refusals(flow.engine, seq)] == [TOKEN_REFUSED]


def test_a_code_of_a_mission_past_its_expiry_derives_nothing(flow: Flow) -> None:
    # The code (60 s) outlives the Mission (30 s): the gate's clock check refuses it.
    expiry = flow.now().replace(microsecond=0) + timedelta(seconds=30)
    pushed, code = flow.approved_code(
        intent=mission_intent(flow.now(), mission_expiry=instant(expiry)))
    mission_id = flow.mission_of(pushed.request_uri).mission_id
    flow.clock.advance(31)
    before = snapshot(flow.engine)
    response = flow.redeem(code, pushed.pkce.verifier)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_grant" and body.get("mission_state") == "expired", body
    after = snapshot(flow.engine)
    for table in ("authorization_codes", "refresh_tokens", "issued_tokens",
                  "derivation_counters"):
        assert after[table] == before[table], table
    assert flow.mission(mission_id).state is State.EXPIRED


def _exhaust(flow: Flow, grant: Grant, key: Key | None) -> str:
    """Refresh until the cap of 2 is reached; the refresh token then in hand."""
    proof = flow.dpop(key) if key is not None else None
    rotated = flow.refresh(grant.refresh_token, dpop=proof)
    assert rotated.status_code == 200, rotated.text
    return str(rotated.json()["refresh_token"])


def test_max_derivations_is_a_hard_cap_that_refusals_do_not_count(flow: Flow) -> None:
    key = generate_key()
    intent = mission_intent(flow.now(), context={"max_derivations": 2})
    grant = flow.grant(dpop_key=key, intent=intent)  # derivation 1
    # A refresh refused for a bad proof is not counted (issuance digest 16.34).
    refused_at_token(flow, lambda: flow.refresh(grant.refresh_token,
                                                dpop=flow.dpop(generate_key())),
                     "invalid_dpop_proof")
    assert flow.derivations(grant.mission_id) == 1
    last = _exhaust(flow, grant, key)  # derivation 2
    assert flow.derivations(grant.mission_id) == 2
    for _ in range(2):
        body = refused_at_token(flow, lambda: flow.refresh(last, dpop=flow.dpop(key)),
                                "invalid_grant", mission_id=grant.mission_id)
        assert body["mission_error"] == "derivations_exhausted"
        assert body["mission_state"] == "active"
    assert flow.derivations(grant.mission_id) == 2


def test_a_mission_id_parameter_grants_nothing(flow: Flow) -> None:
    # Issuance digest 13.1: the grant determines the Mission, never a client-supplied id.
    mine = flow.grant()
    other = flow.grant(intent=mission_intent(flow.now(), resources=[ERP]))
    response = flow.refresh(mine.refresh_token, mission_id=other.mission_id)
    assert response.status_code == 200
    assert response.json()["mission_id"] == mine.mission_id


# -- the whole module -------------------------------------------------------------------------


def test_refusals_left_a_verifiable_audit_log(flow: Flow) -> None:
    # Run last in the module.
    audit_verifies(flow.engine)
