"""RFC 7591 dynamic client registration over HTTP against the real app and database (the
``flow`` fixture: SQLite and PostgreSQL): what is registered, what is refused (and that a
refusal stores nothing), and that a registered client can run the whole flow."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import func, select

from missionbound.issuer.registration import AUDIT_REGISTERED, CLIENT_ID_PREFIX
from missionbound.store.clients import get_client
from missionbound.store.models import AuditRecord, Client
from missionbound.tenant import SecretHash
from tests.issuer.flow import (
    ERP,
    ISSUER,
    MCP,
    PURPOSE,
    REDIRECT_URI,
    REPORTING,
    Flow,
    audit_verifies,
    mission_intent,
    new_pkce,
)
from tests.issuer.test_introspection import RS, introspected
from tests.protocol.proofs import generate_key


def register(flow: Flow, metadata: Any) -> httpx.Response:
    return flow.client.post("/register", json=metadata)


def registered(flow: Flow, metadata: dict[str, Any]) -> dict[str, Any]:
    response = register(flow, metadata)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def stored_state(flow: Flow) -> tuple[int, int]:
    """How many clients are registered and how many audit records exist."""
    with flow.store.read() as session, session.begin():
        return (int(session.scalar(select(func.count()).select_from(Client)) or 0),
                int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0))


def public_client(**extra: Any) -> dict[str, Any]:
    return {"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "A registered public agent", "dpop_bound_access_tokens": True,
            "mission_purposes_registered": [PURPOSE],
            "mission_resources": {ERP: ["*"]}, **extra}


# -- what is registered ------------------------------------------------------------------


def test_a_confidential_client_gets_a_secret_once_and_the_store_keeps_its_hash(
    flow: Flow,
) -> None:
    body = registered(flow, {"redirect_uris": ["https://agent.example/cb"],
                             "client_name": "Agent", "mission_resources": {MCP: ["get_invoice"]}})
    assert body["client_id"].startswith(CLIENT_ID_PREFIX)
    assert body["client_secret_expires_at"] == 0
    assert abs(body["client_id_issued_at"] - time.time()) < 3600
    secret = body["client_secret"]
    assert len(secret) >= 43
    # RFC 7591 section 2 defaults, and exactly what was registered (section 3.2.1).
    assert {k: v for k, v in body.items() if not k.startswith("client_")} == {
        "redirect_uris": ["https://agent.example/cb"],
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "mission_resources": {MCP: ["get_invoice"]},
    }
    with flow.store.read() as session, session.begin():
        row = get_client(session, body["client_id"])
        assert row is not None and row.secret_hash is not None
        assert secret not in row.secret_hash and secret not in str(row.client_metadata)
        assert SecretHash.decode(row.secret_hash).matches(secret)
        assert row.client_metadata["client_name"] == "Agent"
        audit = session.scalars(select(AuditRecord).where(
            AuditRecord.event == AUDIT_REGISTERED,
            AuditRecord.actor["client_id"].as_string() == body["client_id"])).all()
        assert len(audit) == 1 and secret not in str(audit[0].data)
    audit_verifies(flow.engine)
    # The secret works (client_secret_basic) at an endpoint that needs client auth.
    ok = flow.client.post("/revoke", data={"token": "unknown"},
                          auth=(body["client_id"], secret))
    assert ok.status_code == 200
    wrong = flow.client.post("/revoke", data={"token": "unknown"},
                             auth=(body["client_id"], "not-the-secret"))
    assert wrong.status_code == 401


def test_a_public_client_gets_no_secret(flow: Flow) -> None:
    body = registered(flow, public_client())
    assert "client_secret" not in body and "client_secret_expires_at" not in body
    assert body["mission_resources"] == {ERP: ["invoices.read", "journal-entries.write"]}
    assert body["dpop_bound_access_tokens"] is True
    with flow.store.read() as session, session.begin():
        row = get_client(session, body["client_id"])
        assert row is not None and row.secret_hash is None


def test_unknown_members_are_ignored_and_cannot_grant_anything(flow: Flow) -> None:
    # RFC 7591 section 2: unknown metadata is ignored. Ids, secrets and RS audiences are the
    # server's to assign, never the client's to claim.
    body = registered(flow, {
        "redirect_uris": [REDIRECT_URI], "client_id": "demo-rs",
        "client_secret": "chosen-secret", "audiences": [ERP, MCP], "logo_uri": "https://x/",
        "x_custom": {"nested": True},
    })
    assert body["client_id"] != "demo-rs" and body["client_secret"] != "chosen-secret"
    assert not {"audiences", "logo_uri", "x_custom"} & set(body)
    grant = flow.grant()
    caller = (body["client_id"], body["client_secret"])
    assert introspected(flow, grant.access_token, auth=caller) == {"active": False}
    # demo-rs is still the configured client, with its own secret.
    assert introspected(flow, grant.access_token, auth=RS)["active"] is True


def test_a_registered_id_is_never_reused(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    import missionbound.issuer.registration as registration

    taken = registered(flow, {"redirect_uris": [REDIRECT_URI]})["client_id"]
    values = iter([taken.removeprefix(CLIENT_ID_PREFIX), "fresh-id-fresh-id-fresh"])

    class FixedSecrets:
        @staticmethod
        def token_urlsafe(size: int) -> str:
            return next(values) if size == 16 else secrets.token_urlsafe(size)

    monkeypatch.setattr(registration, "secrets", FixedSecrets)
    again = registered(flow, {"redirect_uris": [REDIRECT_URI]})
    assert again["client_id"] == CLIENT_ID_PREFIX + "fresh-id-fresh-id-fresh"


def test_loopback_and_https_redirect_uris_are_accepted(flow: Flow) -> None:
    uris = ["https://agent.example/cb?tenant=1", "http://127.0.0.1:7777/cb",
            "http://[::1]/cb", "http://127.0.0.1/cb"]
    assert registered(flow, {"redirect_uris": uris})["redirect_uris"] == uris


# -- a registered client runs the whole flow ---------------------------------------------


def test_a_registered_public_client_runs_the_whole_flow(flow: Flow) -> None:
    client_id = registered(flow, public_client())["client_id"]
    key = generate_key()
    pkce = new_pkce()
    intent = mission_intent(flow.now(), resources=[ERP],
                            context={"max_value": {"amount": "500.00", "currency": "USD"}})
    pushed = flow.client.post(
        "/par", data=flow.par_params(client_id=client_id, intent=intent, pkce=pkce),
        headers={"DPoP": flow.dpop(key, path="/par")})
    assert pushed.status_code == 201, pushed.text
    query = flow.approve(pushed.json()["request_uri"], client_id=client_id)
    assert query["iss"] == ISSUER

    # dpop_bound_access_tokens: a token request without a proof is refused.
    no_proof = flow.redeem(query["code"], pkce.verifier, auth=None, client_id=client_id)
    assert no_proof.status_code == 400, no_proof.text
    tokens = flow.redeem(query["code"], pkce.verifier, auth=None, client_id=client_id,
                         dpop=flow.dpop(key))
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["token_type"] == "DPoP"
    _, claims = flow.decode(body["access_token"])
    assert claims["client_id"] == client_id and claims["aud"] == ERP
    assert claims["cnf"] == {"jkt": key.thumbprint()}
    assert {entry["resource"] for entry in claims["authorization_details"]} == {ERP}

    refreshed = flow.refresh(body["refresh_token"], auth=None, client_id=client_id,
                             dpop=flow.dpop(key))
    assert refreshed.status_code == 200, refreshed.text
    access = refreshed.json()["access_token"]
    seen = introspected(flow, access)
    assert seen["active"] is True and seen["client_id"] == client_id
    assert seen["cnf"] == {"jkt": key.thumbprint()}

    # The public client revokes its own grant with "none" (RFC 7009 section 2.1).
    revoked = flow.client.post("/revoke", data={"token": refreshed.json()["refresh_token"],
                                                "client_id": client_id})
    assert revoked.status_code == 200, revoked.text
    assert introspected(flow, access) == {"active": False}
    again = flow.refresh(refreshed.json()["refresh_token"], auth=None, client_id=client_id,
                         dpop=flow.dpop(key))
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_registered_client_cannot_reach_past_its_ceiling(flow: Flow) -> None:
    client_id = registered(flow, public_client(mission_resources={ERP: ["invoices.read"]},
                                               mission_purposes_registered=[REPORTING]))[
        "client_id"]
    # Its purpose list excludes the demo purpose: the intent is refused at PAR.
    refused = flow.client.post("/par", data=flow.par_params(
        client_id=client_id, intent=mission_intent(flow.now(), resources=[ERP])))
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_request"
    assert "purpose" in refused.json()["error_description"]


def test_a_registered_private_key_jwt_client_authenticates(flow: Flow) -> None:
    key = ECKey.generate_key("P-256", private=True)
    client_id = registered(flow, {
        "redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [key.as_dict(private=False)]}})["client_id"]
    now = int(time.time())
    assertion = jwt.encode({"alg": "ES256"}, {
        "iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now,
        "exp": now + 60, "jti": secrets.token_urlsafe(12)}, key)
    grant = flow.grant()
    response = flow.client.post("/introspect", data={
        "token": grant.access_token,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})
    # Authenticated (200), but not an audience of the token.
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}


# -- what is refused ---------------------------------------------------------------------


def _small_rsa() -> dict[str, Any]:
    big = RSAKey.generate_key(2048, private=False).as_dict(private=False)
    short = base64.urlsafe_b64encode(b"\xc1" * 128).rstrip(b"=").decode()  # 1024 bits
    return {**big, "n": short}


GOOD = {"redirect_uris": [REDIRECT_URI]}
PRIVATE_KEY = ECKey.generate_key("P-256", private=True)
REFUSALS: list[tuple[str, Any, str]] = [
    ("not-an-object", [GOOD], "invalid_client_metadata"),
    ("no-redirect-uris", {}, "invalid_redirect_uri"),
    ("empty-redirect-uris", {"redirect_uris": []}, "invalid_redirect_uri"),
    ("http-not-loopback", {"redirect_uris": ["http://agent.example/cb"]},
     "invalid_redirect_uri"),
    ("localhost", {"redirect_uris": ["http://localhost:8765/cb"]}, "invalid_redirect_uri"),
    ("fragment", {"redirect_uris": ["https://agent.example/cb#x"]}, "invalid_redirect_uri"),
    ("relative", {"redirect_uris": ["/cb"]}, "invalid_redirect_uri"),
    ("custom-scheme", {"redirect_uris": ["com.example.app:/cb"]}, "invalid_redirect_uri"),
    ("userinfo", {"redirect_uris": ["https://user:pw@agent.example/cb"]},
     "invalid_redirect_uri"),
    ("not-a-string", {"redirect_uris": [42]}, "invalid_redirect_uri"),
    ("space", {"redirect_uris": ["https://agent.example/c b"]}, "invalid_redirect_uri"),
    ("twice", {"redirect_uris": [REDIRECT_URI, REDIRECT_URI]}, "invalid_redirect_uri"),
    ("auth-method", {**GOOD, "token_endpoint_auth_method": "client_secret_jwt"},
     "invalid_client_metadata"),
    ("private-key-jwt-without-jwks", {**GOOD, "token_endpoint_auth_method": "private_key_jwt"},
     "invalid_client_metadata"),
    ("jwks-uri", {**GOOD, "token_endpoint_auth_method": "private_key_jwt",
                  "jwks_uri": "https://agent.example/jwks"}, "invalid_client_metadata"),
    ("private-jwk", {**GOOD, "token_endpoint_auth_method": "private_key_jwt",
                     "jwks": {"keys": [PRIVATE_KEY.as_dict(private=True)]}},
     "invalid_client_metadata"),
    ("symmetric-jwk", {**GOOD, "token_endpoint_auth_method": "private_key_jwt",
                       "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
     "invalid_client_metadata"),
    ("short-rsa", {**GOOD, "token_endpoint_auth_method": "private_key_jwt",
                   "jwks": {"keys": [_small_rsa()]}}, "invalid_client_metadata"),
    ("broken-jwk", {**GOOD, "token_endpoint_auth_method": "private_key_jwt",
                    "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA"}]}},
     "invalid_client_metadata"),
    ("jwks-with-secret", {**GOOD, "jwks": {"keys": [PRIVATE_KEY.as_dict(private=False)]}},
     "invalid_client_metadata"),
    ("grant-type", {**GOOD, "grant_types": ["client_credentials"]},
     "invalid_client_metadata"),
    ("refresh-only", {**GOOD, "grant_types": ["refresh_token"]}, "invalid_client_metadata"),
    ("response-type", {**GOOD, "response_types": ["token"]}, "invalid_client_metadata"),
    ("purpose", {**GOOD, "mission_purposes_registered": ["https://evil.example/p"]},
     "invalid_client_metadata"),
    ("resource", {**GOOD, "mission_resources": {"https://evil.example/api": ["*"]}},
     "invalid_client_metadata"),
    ("action", {**GOOD, "mission_resources": {ERP: ["invoices.delete"]}},
     "invalid_client_metadata"),
    ("no-actions", {**GOOD, "mission_resources": {ERP: []}}, "invalid_client_metadata"),
    ("resources-not-object", {**GOOD, "mission_resources": [ERP]},
     "invalid_client_metadata"),
    ("dpop-flag", {**GOOD, "dpop_bound_access_tokens": "yes"}, "invalid_client_metadata"),
    ("client-name", {**GOOD, "client_name": "x" * 101}, "invalid_client_metadata"),
    ("client-name-control", {**GOOD, "client_name": "bad\nname"}, "invalid_client_metadata"),
    ("details-type", {**GOOD, "authorization_details_types": ["payment_initiation"]},
     "invalid_client_metadata"),
    ("software-statement", {**GOOD, "software_statement": "eyJ.e30.sig"},
     "unapproved_software_statement"),
]


@pytest.mark.parametrize("metadata, error", [(m, e) for _, m, e in REFUSALS],
                         ids=[name for name, _, _ in REFUSALS])
def test_bad_metadata_is_refused_and_nothing_is_stored(
    flow: Flow, metadata: Any, error: str
) -> None:
    before = stored_state(flow)
    response = register(flow, metadata)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    assert stored_state(flow) == before


@pytest.mark.parametrize("content", [b"{", b'{"redirect_uris": [], "redirect_uris": []}',
                                     b"\xff\xfe", b'{"n": 1.5}', b""],
                         ids=["truncated", "duplicate-member", "not-utf8", "float", "empty"])
def test_a_body_that_is_not_strict_json_is_invalid_client_metadata(
    flow: Flow, content: bytes
) -> None:
    before = stored_state(flow)
    response = flow.client.post("/register", content=content,
                                headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"
    assert stored_state(flow) == before


def test_a_form_body_is_invalid_request(flow: Flow) -> None:
    before = stored_state(flow)
    response = flow.client.post("/register", data={"redirect_uris": REDIRECT_URI})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert stored_state(flow) == before


def test_registration_can_be_turned_off(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from missionbound.config import load_settings
    from missionbound.store.engine import create_engine_for
    from missionbound.web.app import create_app

    settings = load_settings(data_dir=tmp_path, issuer="https://as.example.test",
                             registration_enabled=False, expiry_sweep_seconds=0)
    engine = create_engine_for(settings.database_url)
    with TestClient(create_app(settings, engine=engine)) as client:
        assert "registration_endpoint" not in client.get(
            "/.well-known/oauth-authorization-server").json()
        refused = client.post("/register", json={"redirect_uris": ["https://a.example/cb"]})
        assert refused.status_code == 404
    engine.dispose()


def test_a_client_without_the_refresh_grant_gets_no_refresh_token(flow: Flow) -> None:
    client_id = registered(flow, public_client(grant_types=["authorization_code"]))["client_id"]
    key = generate_key()
    pkce = new_pkce()
    intent = mission_intent(flow.now(), resources=[ERP])
    pushed = flow.client.post(
        "/par", data=flow.par_params(client_id=client_id, intent=intent, pkce=pkce),
        headers={"DPoP": flow.dpop(key, path="/par")})
    assert pushed.status_code == 201, pushed.text
    query = flow.approve(pushed.json()["request_uri"], client_id=client_id)
    tokens = flow.redeem(query["code"], pkce.verifier, auth=None, client_id=client_id,
                         dpop=flow.dpop(key))
    assert tokens.status_code == 200, tokens.text
    assert "refresh_token" not in tokens.json()
