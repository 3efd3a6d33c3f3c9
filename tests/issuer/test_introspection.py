"""RFC 7662 introspection with the Mission projection (PROFILE.md section 10, issuance digest
8.1), over HTTP against the real app and database (the ``flow`` fixture: SQLite and
PostgreSQL). Introspection writes nothing, so every test also checks the store is unchanged."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from missionbound.issuer.clients import OAuthClient
from missionbound.issuer.introspection import (
    AUDIT_REFUSED,
    AccessTokenKeys,
    FoundToken,
    find_token,
    project,
)
from missionbound.issuer.keys import rotate_signing_key
from missionbound.mission.derivation import ClientCeiling
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.store.lifecycle import transition
from missionbound.store.models import IssuedToken
from tests.issuer.flow import (
    AGENT,
    ERP,
    ISSUER,
    MCP,
    SUBAGENT,
    Flow,
    last_audit_seq,
    refusals,
    snapshot,
)
from tests.protocol.proofs import generate_key

RS = ("demo-rs", "demo-rs-secret")


def introspect(flow: Flow, token: str, *, auth: tuple[str, str] | None = RS,
               **extra: str) -> httpx.Response:
    return flow.client.post("/introspect", data={"token": token, **extra}, auth=auth)


def introspected(flow: Flow, token: str, **kwargs: Any) -> dict[str, Any]:
    response = introspect(flow, token, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def change_mission(flow: Flow, mission_id: str, event: Event) -> None:
    """An administrator's lifecycle event, committed straight to the store."""
    with flow.store.begin() as session:
        transition(session, mission_id, event, roles={Role.ADMIN},
                   actor={"role": "admin", "sub": "bob"}, reason="test", now=flow.now())


# -- active tokens -----------------------------------------------------------------------


def test_an_audience_sees_the_mission_projection(flow: Flow) -> None:
    grant = flow.grant()
    _, claims = flow.decode(grant.access_token)
    mission = flow.mission(grant.mission_id)
    before = snapshot(flow.engine)
    body = introspected(flow, grant.access_token)
    assert body == {
        "active": True,
        "client_id": "demo-agent",
        "sub": "alice",
        "aud": [ERP, MCP],
        "iss": ISSUER,
        "exp": claims["exp"],
        "iat": claims["iat"],
        "jti": claims["jti"],
        "token_type": "Bearer",
        "authorization_details": claims["authorization_details"],
        "mission": {"id": grant.mission_id, "origin": ISSUER,
                    "authority_hash": mission.authority_hash,
                    "policy_version": mission.policy_version, "state": "active",
                    "version": mission.version},
    }
    assert snapshot(flow.engine) == before


def test_a_dpop_bound_token_introspects_with_its_key(flow: Flow) -> None:
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    body = introspected(flow, grant.access_token)
    assert body["active"] is True
    assert body["token_type"] == "DPoP"
    assert body["cnf"] == {"jkt": key.thumbprint()}


def test_a_narrowed_token_shows_its_one_audience(flow: Flow) -> None:
    pushed, code = flow.approved_code()
    response = flow.redeem(code, pushed.pkce.verifier, resource=ERP)
    assert response.status_code == 200, response.text
    body = introspected(flow, response.json()["access_token"])
    assert body["aud"] == ERP
    assert {entry["resource"] for entry in body["authorization_details"]} == {ERP}


def test_authorization_details_are_cut_to_the_callers_audiences(flow: Flow) -> None:
    grant = flow.grant()
    _, claims = flow.decode(grant.access_token)
    mission = flow.mission(grant.mission_id)
    token = FoundToken(kind="access_token", client_id="demo-agent",
                       mission_id=grant.mission_id, grant_id=None, live=True, claims=claims,
                       jti=claims["jti"])
    erp_only = OAuthClient(
        client_id="erp-rs", client_name="ERP", auth_methods=("client_secret_basic",),
        redirect_uris=(), grant_types=(), ceiling=ClientCeiling("erp-rs", {}), purposes=None,
        secret=None, audiences=frozenset({ERP, "https://elsewhere.example/api"}),
    )
    body = project(token, mission, State.ACTIVE, erp_only)
    # Another audience's entries (MCP) and other audiences are never disclosed.
    assert body["aud"] == ERP
    assert body["authorization_details"] == [
        entry for entry in claims["authorization_details"] if entry["resource"] == ERP]
    assert MCP not in json.dumps(body)


# -- who may see what --------------------------------------------------------------------


@pytest.mark.parametrize("caller", [SUBAGENT, AGENT], ids=["other-client", "token-client"])
def test_a_caller_that_is_not_an_audience_learns_nothing(
    flow: Flow, caller: tuple[str, str]
) -> None:
    # RFC 7662 section 2.2: a caller not allowed to introspect this token gets "active":
    # false, even the client the token was issued to (it is not a Resource Server for it).
    grant = flow.grant()
    assert introspected(flow, grant.access_token, auth=caller) == {"active": False}


@pytest.mark.parametrize("auth, data", [
    (None, {}),
    (("demo-rs", "wrong-secret"), {}),
    (None, {"client_id": "demo-rs", "client_secret": "wrong-secret"}),
    (None, {"client_id": "nobody", "client_secret": "whatever"}),
    # A public client (``none``) is never an introspection caller.
    (None, {"client_id": "demo-rs"}),
], ids=["no-auth", "wrong-basic", "wrong-post", "unknown-post", "none"])
def test_an_unauthenticated_caller_gets_401_and_nothing_changes(
    flow: Flow, auth: tuple[str, str] | None, data: dict[str, str]
) -> None:
    grant = flow.grant()
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    response = flow.client.post("/introspect", data={"token": grant.access_token, **data},
                                auth=auth)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert "Basic" in response.headers["www-authenticate"]
    assert snapshot(flow.engine) == before
    # Unauthenticated requests leave no audit record (no log flooding; decision O9).
    assert refusals(flow.engine, seq) == []


def test_a_method_the_caller_did_not_register_is_refused(flow: Flow) -> None:
    # demo-rs registered client_secret_basic only: the right secret sent by post is refused.
    grant = flow.grant()
    response = flow.client.post("/introspect", data={
        "token": grant.access_token, "client_id": "demo-rs", "client_secret": "demo-rs-secret"})
    assert response.status_code == 401


@pytest.mark.parametrize("form", [{"token_type_hint": "access_token"}, {"token": ""}],
                         ids=["missing", "empty"])
def test_a_request_without_a_token_is_invalid_request(flow: Flow, form: dict[str, str]
                                                      ) -> None:
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    response = flow.client.post("/introspect", data=form, auth=RS)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert snapshot(flow.engine) == before
    assert [(r["event"], r["actor"]) for r in refusals(flow.engine, seq)] == [
        (AUDIT_REFUSED, {"client_id": "demo-rs"})]


def test_a_repeated_token_parameter_is_invalid_request(flow: Flow) -> None:
    grant = flow.grant()
    response = flow.client.post(
        "/introspect", auth=RS, headers={"Content-Type": "application/x-www-form-urlencoded"},
        content=str(httpx.QueryParams([("token", grant.access_token),
                                       ("token", grant.refresh_token)])).encode())
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_a_json_body_is_invalid_request(flow: Flow) -> None:
    response = flow.client.post("/introspect", json={"token": "x"}, auth=RS)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("hint", ["access_token", "refresh_token", "id_token", ""])
def test_the_token_type_hint_is_only_a_hint(flow: Flow, hint: str) -> None:
    # RFC 7662 section 2.1: the server extends its search past a wrong hint.
    grant = flow.grant()
    body = introspected(flow, grant.access_token, token_type_hint=hint)
    assert body["active"] is True and body["token_type"] == "Bearer"
    body = introspected(flow, grant.refresh_token, auth=AGENT, token_type_hint=hint)
    assert body["active"] is True and body["token_type"] == "refresh_token"


# -- refresh tokens ----------------------------------------------------------------------


def test_a_refresh_token_introspects_for_the_client_it_was_issued_to(flow: Flow) -> None:
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    mission = flow.mission(grant.mission_id)
    body = introspected(flow, grant.refresh_token, auth=AGENT)
    assert body["active"] is True
    assert body["token_type"] == "refresh_token"
    assert body["client_id"] == "demo-agent"
    assert body["sub"] == "alice"
    assert body["iss"] == ISSUER
    assert body["cnf"] == {"jkt": key.thumbprint()}
    assert body["exp"] > body["iat"]
    assert body["authorization_details"] == mission.authority_set
    assert body["mission"]["id"] == grant.mission_id
    assert body["mission"]["state"] == "active"
    # Anyone else: nothing, the audiences of its access tokens included.
    assert introspected(flow, grant.refresh_token, auth=RS) == {"active": False}
    assert introspected(flow, grant.refresh_token, auth=SUBAGENT) == {"active": False}


def test_a_rotated_refresh_token_is_inactive(flow: Flow) -> None:
    grant = flow.grant()
    refreshed = flow.refresh(grant.refresh_token)
    assert refreshed.status_code == 200, refreshed.text
    assert introspected(flow, grant.refresh_token, auth=AGENT) == {"active": False}
    new_refresh = refreshed.json()["refresh_token"]
    assert introspected(flow, new_refresh, auth=AGENT)["active"] is True
    # The first access token of the grant stays valid: rotation revokes nothing.
    assert introspected(flow, grant.access_token)["active"] is True


# -- the Mission's state -----------------------------------------------------------------


@pytest.mark.parametrize("event, state", [(Event.REVOKE, "revoked"),
                                          (Event.SUSPEND, "suspended"),
                                          (Event.COMPLETE, "completed")])
def test_a_valid_token_of_a_dead_mission_says_why_to_an_audience_only(
    flow: Flow, event: Event, state: str
) -> None:
    grant = flow.grant()
    mission = flow.mission(grant.mission_id)
    change_mission(flow, grant.mission_id, event)
    before = snapshot(flow.engine)
    member = {"id": grant.mission_id, "origin": ISSUER,
              "authority_hash": mission.authority_hash,
              "policy_version": mission.policy_version, "state": state,
              "version": mission.version + 1}
    assert introspected(flow, grant.access_token) == {"active": False, "mission": member}
    assert introspected(flow, grant.refresh_token, auth=AGENT) == {
        "active": False, "mission": member}
    # Never Mission detail to an unauthorized caller, even on active: false (digest 8.1).
    assert introspected(flow, grant.access_token, auth=SUBAGENT) == {"active": False}
    assert introspected(flow, grant.refresh_token, auth=RS) == {"active": False}
    assert snapshot(flow.engine) == before


def test_a_resumed_mission_makes_its_token_active_again(flow: Flow) -> None:
    grant = flow.grant()
    change_mission(flow, grant.mission_id, Event.SUSPEND)
    assert introspected(flow, grant.access_token)["active"] is False
    change_mission(flow, grant.mission_id, Event.RESUME)
    body = introspected(flow, grant.access_token)
    assert body["active"] is True
    assert body["mission"]["state"] == "active" and body["mission"]["version"] == 4


# -- tokens that are not (or no longer) valid --------------------------------------------


def test_a_token_revoked_by_rfc7009_is_bare_inactive(flow: Flow) -> None:
    grant = flow.grant()
    revoked = flow.client.post("/revoke", data={"token": grant.access_token}, auth=AGENT)
    assert revoked.status_code == 200, revoked.text
    assert introspected(flow, grant.access_token) == {"active": False}
    # The Mission itself is untouched.
    assert flow.mission(grant.mission_id).state is State.ACTIVE


def _resigned(flow: Flow, token: str, key: ECKey, **changes: Any) -> str:
    """``token``'s header and claims (with ``changes``), signed with ``key``."""
    header, claims = flow.decode(token)
    claims.update(changes)
    return jwt.encode(header, claims, key)


def test_a_forged_token_is_bare_inactive(flow: Flow) -> None:
    grant = flow.grant()
    # The same header (kid included) and claims, signed by a key that is not the AS's.
    forged = _resigned(flow, grant.access_token, ECKey.generate_key("P-256", private=True))
    assert introspected(flow, forged) == {"active": False}
    # A genuine token with one character of its signature changed.
    head, body, signature = grant.access_token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert introspected(flow, f"{head}.{body}.{flipped}") == {"active": False}


def test_a_token_signed_by_the_as_but_never_issued_is_inactive(flow: Flow) -> None:
    grant = flow.grant()
    signer = flow.issuer.signer()
    header, claims = flow.decode(grant.access_token)
    for changes in ({"jti": secrets.token_urlsafe(24)}, {"iss": "https://other.example"},
                    {"client_id": "demo-subagent"}):
        token = jwt.encode(header, {**claims, **changes}, signer.key)
        assert introspected(flow, token) == {"active": False}, changes
    # The right claims under another typ (RFC 9068 section 4: at+jwt only).
    token = jwt.encode({**header, "typ": "JWT"}, claims, signer.key)
    assert introspected(flow, token) == {"active": False}


@pytest.mark.parametrize("value", [
    "not-a-token", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 600, "é", " ",
])
def test_garbage_is_bare_inactive(flow: Flow, value: str) -> None:
    assert introspected(flow, value) == {"active": False}


def test_an_expired_token_is_bare_inactive(flow: Flow) -> None:
    grant = flow.grant()
    assert introspected(flow, grant.access_token)["active"] is True
    # The clock only moves forward (flow.Clock); every other test makes its own tokens.
    flow.clock.advance(301)
    assert introspected(flow, grant.access_token) == {"active": False}
    # The refresh token (24 h idle lifetime) lives on.
    assert introspected(flow, grant.refresh_token, auth=AGENT)["active"] is True


def test_a_token_signed_by_a_retired_key_verifies_until_it_expires(flow: Flow) -> None:
    grant = flow.grant()
    rotate_signing_key(flow.store, flow.now())
    # issuer.keys: a retired key stays published (and so verifying) past any token it signed.
    assert introspected(flow, grant.access_token)["active"] is True


def test_the_key_cache_finds_a_key_rotated_in_meanwhile(flow: Flow) -> None:
    keys = AccessTokenKeys()
    rotation = rotate_signing_key(flow.store, flow.now())
    with flow.store.read() as session, session.begin():
        assert keys.find(session, rotation.new_kid, flow.now()) is not None
    later = rotate_signing_key(flow.store, flow.now())
    with flow.store.read() as session, session.begin():
        # Not in the cache (read a moment ago): a kid it does not know makes it read again.
        found = keys.find(session, later.new_kid, flow.now())
        assert found is not None and found.alg == "ES256"
        assert keys.find(session, "no-such-kid", flow.now()) is None


def test_find_token_needs_the_issued_token_row(flow: Flow) -> None:
    grant = flow.grant()
    _, claims = flow.decode(grant.access_token)
    keys = AccessTokenKeys()
    with flow.store.read() as session, session.begin():
        found = find_token(session, grant.access_token, keys=keys, issuer=ISSUER,
                           now=flow.now())
        assert found is not None and found.live and found.jti == claims["jti"]
        assert found.grant_id == session.get(IssuedToken, claims["jti"]).grant_id  # type: ignore[union-attr]
        # Expired tokens are still recognized (revocation needs them), just not live.
        later = flow.now() + timedelta(seconds=claims["exp"] - claims["iat"] + 1)
        expired = find_token(session, grant.access_token, keys=keys, issuer=ISSUER, now=later)
        assert expired is not None and not expired.live
