"""Level 1 issuance end to end, as a client and an Approver see it: a real ``missionbound
serve`` process, on SQLite and on PostgreSQL, driven with plain HTTP only.

PAR with a Mission Intent and a DPoP proof -> /authorize -> sign-in (bob, for alice) -> the
consent page -> Approve -> the callback with ``code`` and ``iss`` (RFC 9207) -> a DPoP-bound
RFC 9068 access token -> refresh with DPoP -> introspection as the demo Resource Server ->
the Mission revoked in the store -> refresh refused with ``mission_state: revoked`` ->
introspection says inactive -> ``missionbound audit verify`` proves the chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import Key, KeySet

from examples.preview_mission import demo_intent
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.store.engine import create_engine_for
from missionbound.store.lifecycle import transition
from missionbound.store.transactions import Store
from tests.e2e_support import ServerHandle, parse_form, running_server, server_environment
from tests.protocol.proofs import generate_key, make_proof

CLIENT = ("demo-agent", "demo-agent-secret")
RESOURCE_SERVER = ("demo-rs", "demo-rs-secret")
REDIRECT_URI = "http://127.0.0.1:8765/callback"
HTTP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0


@pytest.fixture
def server(tmp_path: Path, empty_database_url: str) -> Iterator[ServerHandle]:
    """A demo-tenant server on a fresh SQLite file or a fresh PostgreSQL schema (the suite's
    ``backend`` parameter: the PostgreSQL run is skipped, saying why, when none answers)."""
    with running_server(tmp_path, database_url=empty_database_url) as handle:
        yield handle


@pytest.fixture
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    # Redirects are steps of the flow to check, never followed silently; the client keeps
    # the sign-in cookie like a browser would.
    with httpx.Client(
        base_url=server.base_url, follow_redirects=False, timeout=HTTP_TIMEOUT
    ) as client:
        yield client


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def dpop_post(
    http: httpx.Client, issuer: str, path: str, key: Key, data: dict[str, str],
    auth: tuple[str, str],
) -> httpx.Response:
    """POST with a fresh DPoP proof for ``issuer + path``; retried once with the server's
    nonce if it asks for one (RFC 9449 section 8)."""
    nonce: str | None = None
    for _ in range(2):
        claims: dict[str, Any] = {"htm": "POST", "htu": issuer + path, "iat": int(time.time())}
        if nonce is not None:
            claims["nonce"] = nonce
        proof = make_proof(key, **claims)
        response = http.post(path, data=data, auth=auth, headers={"DPoP": proof})
        nonce = response.headers.get("DPoP-Nonce")
        if response.status_code not in (400, 401) or nonce is None:
            return response
        if response.json().get("error") != "use_dpop_nonce":
            return response
    return response


def follow(http: httpx.Client, response: httpx.Response, status: int = 303) -> str:
    """The Location of a redirect, resolved against the request URL."""
    assert response.status_code == status, response.text[:500]
    return urljoin(str(response.request.url), response.headers["location"])


def verified_claims(http: httpx.Client, token: str) -> dict[str, Any]:
    """The claims of an access token whose signature checks against the published JWKS."""
    keys = KeySet.import_key_set(http.get("/jwks").json())
    claims: dict[str, Any] = jwt.decode(token, keys, algorithms=["ES256", "EdDSA"]).claims
    return claims


def introspect(http: httpx.Client, token: str) -> dict[str, Any]:
    response = http.post("/introspect", data={"token": token}, auth=RESOURCE_SERVER)
    assert response.status_code == 200, (
        f"/introspect answered {response.status_code}: {response.text[:300]}"
    )
    body: dict[str, Any] = response.json()
    return body


def revoke_in_store(database_url: str, mission_id: str) -> None:
    """An administrator revokes the Mission, as the lifecycle surfaces do: one transaction
    with its history row, audit record and outbox event."""
    engine = create_engine_for(database_url)
    try:
        with Store(engine).begin() as session:
            result = transition(
                session, mission_id, Event.REVOKE, roles={Role.ADMIN},
                actor={"role": "admin", "sub": "bob"}, reason="e2e", now=datetime.now(UTC),
            )
        assert result.decision.changed and result.record.state is State.REVOKED
    finally:
        engine.dispose()


def test_par_to_token_to_refresh_to_revocation(
    server: ServerHandle, http: httpx.Client
) -> None:
    issuer = server.base_url
    key = generate_key("ES256")
    jkt = key.thumbprint()
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(12)

    # 1. PAR (RFC 9126) with the Mission Intent; the code will be bound to the DPoP key.
    par = dpop_post(http, issuer, "/par", key, {
        "response_type": "code",
        "client_id": CLIENT[0],
        "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
        "mission_intent": demo_intent(issuer, datetime.now(UTC)),
        "login_hint": "alice",
        "dpop_jkt": jkt,
    }, CLIENT)
    assert par.status_code == 201, par.text
    assert par.headers["cache-control"] == "no-store"
    request_uri = par.json()["request_uri"]
    assert request_uri.startswith("urn:ietf:params:oauth:request_uri:")
    assert par.json()["expires_in"] > 0

    # 2. /authorize, not signed in: sent to /login with a relative next.
    authorize = http.get("/authorize", params={"client_id": CLIENT[0], "request_uri": request_uri})
    login_url = follow(http, authorize)
    assert urlsplit(login_url).path == "/login"

    # 3. Sign in as bob (he may approve for alice), CSRF token from the form.
    login_page = http.get(login_url)
    assert login_page.status_code == 200
    assert "mb_session" in http.cookies
    action, method, hidden = parse_form(login_page.text)
    assert (action, method) == ("/login", "POST") and hidden["csrf_token"]
    signed_in = http.post(action, data={**hidden, "username": "bob", "password": "bob"})
    authorize_again = follow(http, signed_in)
    assert urlsplit(authorize_again).path == "/authorize"

    # 4. The consent page: the Mission is alice's, approved by bob.
    consent_page = http.get(authorize_again)
    assert consent_page.status_code == 200, consent_page.text[:500]
    assert "Reconcile the Q3 invoices" in consent_page.text
    assert "on behalf of" in consent_page.text and "Alice Example" in consent_page.text
    action, method, hidden = parse_form(consent_page.text)
    assert (action, method) == ("/consent", "POST") and hidden["csrf_token"]

    # 5. Approve: back to the client with code, state and iss (RFC 9207).
    approved = http.post(action, data={**hidden, "decision": "approve"})
    callback = urlsplit(follow(http, approved))
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == REDIRECT_URI
    query = {name: values[0] for name, values in parse_qs(callback.query).items()}
    assert query["state"] == state and query["iss"] == issuer and query["code"]

    # 6. The code for a DPoP-bound, Mission-bound RFC 9068 access token.
    token = dpop_post(http, issuer, "/token", key, {
        "grant_type": "authorization_code",
        "code": query["code"],
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }, CLIENT)
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    issued = token.json()
    assert issued["token_type"] == "DPoP"
    mission_id = issued["mission_id"]
    assert mission_id.startswith("msn_") and issued["refresh_token"]
    assert {d["type"] for d in issued["authorization_details"]} == {"mission_resource_access"}
    claims = verified_claims(http, issued["access_token"])
    assert claims["iss"] == issuer and claims["sub"] == "alice"
    assert claims["client_id"] == CLIENT[0]
    assert claims["cnf"] == {"jkt": jkt}
    assert set(claims["aud"]) == {f"{issuer}/demo/erp", f"{issuer}/demo/mcp"}

    # 7. Refresh with DPoP: a new token pair, still bound to the same key.
    refreshed = dpop_post(http, issuer, "/token", key, {
        "grant_type": "refresh_token", "refresh_token": issued["refresh_token"],
    }, CLIENT)
    assert refreshed.status_code == 200, refreshed.text
    renewed = refreshed.json()
    assert renewed["token_type"] == "DPoP"
    assert renewed["refresh_token"] != issued["refresh_token"]  # rotated
    assert renewed["access_token"] != issued["access_token"]
    assert verified_claims(http, renewed["access_token"])["cnf"] == {"jkt": jkt}

    # 8. The demo Resource Server introspects it: active, and the Mission is active.
    live = introspect(http, renewed["access_token"])
    assert live["active"] is True
    assert live["client_id"] == CLIENT[0] and live["sub"] == "alice"
    assert live["mission"]["id"] == mission_id
    assert live["mission"]["state"] == "active"

    # 9. An administrator revokes the Mission in the store (no HTTP lifecycle surface yet).
    revoke_in_store(server.database_url, mission_id)

    # 10. Refresh is refused, naming the Mission's state.
    refused = dpop_post(http, issuer, "/token", key, {
        "grant_type": "refresh_token", "refresh_token": renewed["refresh_token"],
    }, CLIENT)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"
    assert refused.json()["mission_state"] == "revoked"

    # 11. The last access token is no longer active; the Mission's state says why, and
    # nothing else about the token is disclosed (PROFILE.md section 10).
    dead = introspect(http, renewed["access_token"])
    assert dead["active"] is False
    assert set(dead) == {"active", "mission"}
    assert dead["mission"]["id"] == mission_id
    assert dead["mission"]["state"] == "revoked"
    assert dead["mission"]["version"] > live["mission"]["version"]

    # 12. Everything above is in an intact audit chain.
    audit = subprocess.run(
        [sys.executable, "-m", "missionbound", "audit", "verify",
         "--database-url", server.database_url],
        env=server_environment(server.data_dir), cwd=server.data_dir.parent,
        capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "audit log intact" in audit.stdout

    # The server logged every request and no 5xx.
    _, log = server.output()
    statuses = [
        entry["status"] for entry in map(json.loads, filter(str.strip, log.splitlines()))
        if entry.get("event") == "request"
    ]
    assert statuses and all(status < 500 for status in statuses)
