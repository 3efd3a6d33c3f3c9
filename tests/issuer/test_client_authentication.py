"""Client authentication with ``private_key_jwt`` (RFC 7523 section 2.2, assertion ``jti``
single use) and server DPoP nonces (RFC 9449 section 8) over HTTP, with a configured tenant
whose agent holds a key pair instead of a secret."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey

from missionbound.config import Settings, load_settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade
from missionbound.store.missions import list_missions
from missionbound.store.transactions import Store
from missionbound.web.app import create_app
from tests.e2e_support import parse_form
from tests.protocol.proofs import generate_key, make_proof

ISSUER = "http://127.0.0.1:8000"
REDIRECT_URI = "http://127.0.0.1:9999/cb"
DEMO_TENANT = Path(__file__).resolve().parents[2] / "missionbound" / "demo" / "tenant.toml"


def tenant_file(tmp_path: Path, agent_key: ECKey) -> Path:
    """A tenant with one user and one private_key_jwt agent, and the demo catalog."""
    catalog = DEMO_TENANT.read_text().split("[catalog]", 1)[1]
    jwks = json.dumps({"keys": [agent_key.as_dict(private=False)]})
    path = tmp_path / "tenant.toml"
    path.write_text(f"""
[tenant]
name = "keys"

[[users]]
username = "carol"
password = "carol-password-not-demo"
display_name = "Carol"

[[clients]]
client_id = "key-agent"
token_endpoint_auth_methods = ["private_key_jwt"]
redirect_uris = ["{REDIRECT_URI}"]
mission_resources = {{ "{{issuer}}/demo/erp" = ["*"] }}
jwks = {jwks_toml(jwks)}

[catalog]{catalog}""")
    return path


def jwks_toml(jwks_json: str) -> str:
    # An inline TOML table with the same content as the JSON JWK Set.
    keys = json.loads(jwks_json)["keys"]
    members = ", ".join(
        "{ " + ", ".join(f'{name} = "{value}"' for name, value in key.items()) + " }"
        for key in keys
    )
    return "{ keys = [" + members + "] }"


@pytest.fixture(params=["P-256", "P-384"])
def agent_key(request: pytest.FixtureRequest) -> ECKey:
    # Every advertised assertion algorithm must really authenticate (ES256, ES384).
    return ECKey.generate_key(request.param, private=True)


def make_settings(tmp_path: Path, agent_key: ECKey, **extra: Any) -> Settings:
    return load_settings(data_dir=tmp_path, issuer=ISSUER,
                         tenant_file=tenant_file(tmp_path, agent_key), expiry_sweep_seconds=0,
                         **extra)


def make_client(settings: Settings) -> Iterator[TestClient]:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    ensure_signing_key(Store(engine), datetime.now(UTC))
    with TestClient(create_app(settings, engine=engine), base_url=ISSUER,
                    follow_redirects=False) as client:
        yield client
    engine.dispose()


@pytest.fixture
def client(tmp_path: Path, agent_key: ECKey) -> Iterator[TestClient]:
    yield from make_client(make_settings(tmp_path, agent_key))


def assertion(key: ECKey, *, aud: str = ISSUER, jti: str | None = None,
              sub: str = "key-agent", lifetime: int = 60) -> str:
    now = int(time.time())
    claims = {"iss": sub, "sub": sub, "aud": aud, "iat": now, "exp": now + lifetime,
              "jti": jti or secrets.token_urlsafe(12)}
    alg = "ES384" if key.as_dict()["crv"] == "P-384" else "ES256"
    return jwt.encode({"alg": alg}, claims, key, algorithms=[alg])


def client_auth(value: str) -> dict[str, str]:
    return {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": value}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def intent() -> str:
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    return json.dumps({"goal": "read the invoices", "resources": [f"{ISSUER}/demo/erp"],
                       "mission_expiry": expiry})


def par_params(challenge: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": "key-agent", "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge, "code_challenge_method": "S256", "state": "s1",
            "mission_intent": intent()}


def approve(client: TestClient, request_uri: str) -> dict[str, str]:
    response = client.get("/authorize", params={"client_id": "key-agent",
                                                "request_uri": request_uri})
    login = client.get(response.headers["location"])
    _, _, hidden = parse_form(login.text)
    signed_in = client.post("/login", data={**hidden, "username": "carol",
                                            "password": "carol-password-not-demo"})
    page = client.get(signed_in.headers["location"])
    _, _, hidden = parse_form(page.text)
    decided = client.post("/consent", data={**hidden, "decision": "approve"})
    return {k: v[0] for k, v in parse_qs(urlsplit(decided.headers["location"]).query).items()}


def test_private_key_jwt_authenticates_par_and_token(client: TestClient, agent_key: ECKey
                                                     ) -> None:
    verifier, challenge = pkce()
    pushed = client.post("/par", data={**par_params(challenge),
                                       **client_auth(assertion(agent_key))})
    assert pushed.status_code == 201, pushed.text
    answer = approve(client, pushed.json()["request_uri"])
    assert answer["iss"] == ISSUER
    redeem = {"grant_type": "authorization_code", "code": answer["code"],
              "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    # draft-ietf-oauth-rfc7523bis: only the issuer identifier is an acceptable audience; an
    # endpoint URL (audience injection) is refused, and the code stays usable.
    endpoint_aud = client.post("/token", data={
        **redeem, **client_auth(assertion(agent_key, aud=f"{ISSUER}/token"))})
    assert endpoint_aud.status_code in (400, 401)
    assert endpoint_aud.json()["error"] == "invalid_client"
    tokens = client.post("/token", data={**redeem, **client_auth(assertion(agent_key))})
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["token_type"] == "Bearer"


def test_an_assertion_is_single_use(client: TestClient, agent_key: ECKey) -> None:
    _, challenge = pkce()
    spent = assertion(agent_key)
    assert client.post("/par", data={**par_params(challenge), **client_auth(spent)}
                       ).status_code == 201
    replay = client.post("/par", data={**par_params(challenge), **client_auth(spent)})
    assert replay.status_code in (400, 401)
    assert replay.json()["error"] == "invalid_client"


@pytest.mark.parametrize("case", ["other_key", "wrong_audience", "too_long", "other_subject"])
def test_bad_assertions_are_invalid_client_and_create_nothing(
    client: TestClient, agent_key: ECKey, case: str
) -> None:
    forged = {
        "other_key": lambda: assertion(ECKey.generate_key("P-256", private=True)),
        "wrong_audience": lambda: assertion(agent_key, aud="https://elsewhere.example"),
        "too_long": lambda: assertion(agent_key, lifetime=3600),
        "other_subject": lambda: assertion(agent_key, sub="nobody"),
    }[case]()
    _, challenge = pkce()
    refused = client.post("/par", data={**par_params(challenge), **client_auth(forged)})
    assert refused.status_code in (400, 401)
    assert refused.json()["error"] == "invalid_client"
    # Nothing was stored.
    store = Store(client.app.state.engine)  # type: ignore[attr-defined]
    with store.read() as session, session.begin():
        assert list_missions(session) == []


def test_a_secret_is_not_accepted_from_a_key_only_client(client: TestClient) -> None:
    _, challenge = pkce()
    refused = client.post("/par", data=par_params(challenge), auth=("key-agent", "guess"))
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"


def test_server_nonces_are_required_announced_and_accepted(tmp_path: Path, agent_key: ECKey
                                                           ) -> None:
    settings = make_settings(tmp_path, agent_key, dpop_nonce_required=True)
    for client in make_client(settings):
        key = generate_key()
        _, challenge = pkce()
        url = f"{ISSUER}/par"
        proof = make_proof(key, htu=url, iat=int(time.time()))
        first = client.post("/par", headers={"DPoP": proof}, data={
            **par_params(challenge), **client_auth(assertion(agent_key))})
        assert first.status_code == 400
        assert first.json()["error"] == "use_dpop_nonce"
        nonce = first.headers["DPoP-Nonce"]
        retry = client.post("/par", headers={
            "DPoP": make_proof(key, htu=url, iat=int(time.time()), nonce=nonce)}, data={
            **par_params(challenge), **client_auth(assertion(agent_key))})
        assert retry.status_code == 201, retry.text
        # RFC 9449 section 8.2: every answer carries the nonce to use next.
        assert retry.headers["DPoP-Nonce"]


def test_refusals_carry_a_nonce_too_when_nonces_are_required(tmp_path: Path, agent_key: ECKey
                                                            ) -> None:
    settings = make_settings(tmp_path, agent_key, dpop_nonce_required=True)
    for client in make_client(settings):
        _, challenge = pkce()
        refused = client.post("/par", data={**par_params(challenge), "response_type": "token",
                                            **client_auth(assertion(agent_key))})
        assert refused.status_code == 400
        assert refused.headers["DPoP-Nonce"]
