"""The proof of issue 5: a Mission crosses into another trust domain and stops there when
its origin revokes it. Two real ``missionbound serve`` processes on 127.0.0.1 (the origin on
SQLite; the Resource AS on SQLite, and on PostgreSQL when one answers), plain HTTP only.

1. An agent gets a Mission approved at the origin (PAR, sign-in, consent) and a DPoP-bound
   refresh token.
2. It gets an ID-JAG at the origin (token exchange, ``audience`` = the Resource AS) and
   redeems it at the Resource AS for a local token, which a partner Resource Server accepts
   (introspection at the Resource AS over HTTP, DPoP proof of ``cnf.jkt``).
3. A replayed ID-JAG, a wrong presenter key, a forged signer and a widened request are
   refused at the Resource AS.
4. The origin revokes the Mission (``POST /mission/lifecycle``, the Approver's browser
   session). An ID-JAG obtained before the revocation and never redeemed is refused at the
   Resource AS the first time it is presented (it asks the origin on every redemption), from
   then on the local token is inactive at the Resource Server, and the next ID-JAG is
   refused at the origin. The delays are printed.
5. With the origin down, the Resource AS fails closed (503), and both audit logs verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from joserfc import jws, jwt
from joserfc.jwk import Key, KeySet

from missionbound import audit
from missionbound.protocol.dpop import access_token_hash
from missionbound.store.engine import create_engine_for
from tests.cross_domain.two_domains import (
    AGENT_AT_ORIGIN,
    AGENT_AT_RAS,
    BOB_PASSWORD,
    HTTP_TIMEOUT,
    REDIRECT_URI,
    ErpResource,
    TwoDomains,
    two_domains,
)
from tests.e2e_support import parse_form, parse_forms, stop_server
from tests.protocol.proofs import generate_key, make_proof

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
ID_JAG_TYPE = "urn:ietf:params:oauth:token-type:id-jag"


@pytest.fixture
def domains(tmp_path: Path, empty_database_url: str) -> Iterator[TwoDomains]:
    """The Resource AS on the suite's ``backend`` (a fresh SQLite file, or a fresh PostgreSQL
    schema: skipped, saying why, when none answers); the origin always on SQLite."""
    with two_domains(tmp_path, ras_database_url=empty_database_url) as started:
        yield started


def post_with_dpop(http: httpx.Client, url: str, key: Key, data: dict[str, str],
                   auth: tuple[str, str]) -> httpx.Response:
    proof = make_proof(key, htm="POST", htu=url, iat=int(time.time()))
    return http.post(url, data=data, auth=auth, headers={"DPoP": proof})


def call_erp(http: httpx.Client, erp: ErpResource, token: str, key: Key) -> httpx.Response:
    url = f"{erp.url}/erp/invoices"
    proof = make_proof(key, htm="GET", htu=url, iat=int(time.time()),
                       ath=access_token_hash(token))
    return http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


def approved_mission(http: httpx.Client, domains: TwoDomains, key: Key
                     ) -> tuple[dict[str, Any], httpx.Client]:
    """PAR -> sign-in as bob -> consent -> code -> DPoP-bound tokens. The token response and
    bob's signed-in browser."""
    origin = domains.origin.base_url
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    intent = {
        "goal": "Reconcile the Q3 invoices in the partner ERP.",
        "resources": [domains.erp],
        "mission_expiry": (datetime.now(UTC) + timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "context": {"max_value": {"amount": "500.00", "currency": "USD"}},
    }
    par = post_with_dpop(http, f"{origin}/par", key, {
        "response_type": "code", "client_id": AGENT_AT_ORIGIN[0], "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": "st-1",
        "mission_intent": json.dumps(intent), "login_hint": "alice",
        "dpop_jkt": key.thumbprint(),
    }, AGENT_AT_ORIGIN)
    assert par.status_code == 201, par.text
    browser = httpx.Client(base_url=origin, follow_redirects=False, timeout=HTTP_TIMEOUT)
    authorize = browser.get("/authorize", params={"client_id": AGENT_AT_ORIGIN[0],
                                                  "request_uri": par.json()["request_uri"]})
    login_url = urljoin(str(authorize.request.url), authorize.headers["location"])
    action, _, hidden = parse_form(browser.get(login_url).text)
    signed_in = browser.post(action, data={**hidden, "username": "bob",
                                           "password": BOB_PASSWORD})
    assert signed_in.status_code == 303, signed_in.text
    consent = browser.get(urljoin(str(signed_in.request.url), signed_in.headers["location"]))
    assert consent.status_code == 200, consent.text[:500]
    action, _, hidden = parse_form(consent.text)
    approved = browser.post(action, data={**hidden, "decision": "approve"})
    assert approved.status_code == 303, approved.text
    query = parse_qs(urlsplit(approved.headers["location"]).query)
    token = post_with_dpop(http, f"{origin}/token", key, {
        "grant_type": "authorization_code", "code": query["code"][0],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    }, AGENT_AT_ORIGIN)
    assert token.status_code == 200, token.text
    return token.json(), browser


def id_jag(http: httpx.Client, domains: TwoDomains, refresh_token: str, key: Key
           ) -> httpx.Response:
    return post_with_dpop(http, f"{domains.origin.base_url}/token", key, {
        "grant_type": TOKEN_EXCHANGE, "subject_token": refresh_token,
        "subject_token_type": REFRESH_TOKEN_TYPE, "requested_token_type": ID_JAG_TYPE,
        "audience": domains.ras.base_url,
    }, AGENT_AT_ORIGIN)


def redeem(http: httpx.Client, domains: TwoDomains, assertion: str, key: Key,
           **params: str) -> httpx.Response:
    return post_with_dpop(http, f"{domains.ras.base_url}/token", key, {
        "grant_type": JWT_BEARER, "assertion": assertion, **params}, AGENT_AT_RAS)


def refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    return body


def revoke_at_origin(browser: httpx.Client, mission_id: str) -> httpx.Response:
    """bob, signed in at the origin, revokes the Mission at /mission/lifecycle with his
    browser session and its CSRF token (read from the console page)."""
    page = browser.get(f"/console/missions/{mission_id}")
    assert page.status_code == 200, page.text[:500]
    csrf = next(form.hidden["csrf_token"] for form in parse_forms(page.text)
                if "csrf_token" in form.hidden)
    return browser.post("/mission/lifecycle", data={
        "mission": mission_id, "operation": "revoke", "reason": "cross-domain proof",
        "nonce": "n-" + secrets.token_urlsafe(8), "csrf_token": csrf})


def test_a_mission_crosses_domains_and_stops_there_when_revoked(domains: TwoDomains) -> None:
    origin, ras = domains.origin.base_url, domains.ras.base_url
    key = generate_key()
    with httpx.Client(timeout=HTTP_TIMEOUT) as http, \
            ErpResource(ras, domains.erp) as erp:
        # 1. The Mission, approved at the origin.
        tokens, browser = approved_mission(http, domains, key)
        mission_id = tokens["mission_id"]

        # 2. An ID-JAG at the origin, redeemed at the Resource AS, used at its ERP.
        issued = id_jag(http, domains, tokens["refresh_token"], key)
        assert issued.status_code == 200, issued.text
        assert issued.json()["issued_token_type"] == ID_JAG_TYPE
        grant = issued.json()["access_token"]
        header = jws.extract_compact(grant.encode()).headers()
        assert header["typ"] == "oauth-id-jag+jwt"
        local = redeem(http, domains, grant, key)
        assert local.status_code == 200, local.text
        local_token = local.json()["access_token"]
        claims = jwt.decode(local_token, KeySet.import_key_set(
            http.get(f"{ras}/jwks").json()), algorithms=["ES256"]).claims
        assert claims["iss"] == ras and claims["aud"] == domains.erp
        assert claims["mission"]["id"] == mission_id and claims["mission"]["origin"] == origin
        assert claims["cnf"] == {"jkt": key.thumbprint()}
        called = call_erp(http, erp, local_token, key)
        assert called.status_code == 200, called.text
        assert called.json()["mission"]["id"] == mission_id
        assert "state" not in called.json()["mission"]

        # 3. Refusals at the Resource AS.
        refused(redeem(http, domains, grant, key), 400, "invalid_grant")  # replayed
        unredeemed = id_jag(http, domains, tokens["refresh_token"], key).json()["access_token"]
        spare = id_jag(http, domains, tokens["refresh_token"], key).json()["access_token"]
        body = refused(redeem(http, domains, spare, generate_key()), 400, "invalid_grant")
        assert "not the key" in body["error_description"]
        forger = generate_key()
        payload = jws.extract_compact(spare.encode()).payload.decode()
        forged = jws.serialize_compact(
            {"typ": "oauth-id-jag+jwt", "alg": "ES256",
             "kid": jws.extract_compact(spare.encode()).headers()["kid"]}, payload, forger)
        refused(redeem(http, domains, forged, key), 400, "invalid_grant")
        widened = [{"type": "mission_resource_access", "resource": domains.erp,
                    "actions": ["journal-entries.write"],
                    "constraints": {"max_value": {"amount": "900.00", "currency": "USD"}}}]
        refused(redeem(http, domains, spare, key, authorization_details=json.dumps(widened)),
                400, "invalid_authorization_details")
        refused(redeem(http, domains, spare, key, resource=f"{ras}/payroll"), 400,
                "invalid_target")
        assert call_erp(http, erp, local_token, forger).status_code == 401

        # 4. The origin revokes the Mission.
        revoked = revoke_at_origin(browser, mission_id)
        assert revoked.status_code == 200, revoked.text
        revoked_at = time.monotonic()
        body = refused(redeem(http, domains, unredeemed, key), 400, "invalid_grant")
        refused_after = time.monotonic() - revoked_at
        assert body["mission_state"] == "revoked"
        assert call_erp(http, erp, local_token, key).status_code == 401
        inactive_after = time.monotonic() - revoked_at
        body = refused(id_jag(http, domains, tokens["refresh_token"], key), 400,
                       "invalid_grant")
        assert body["mission_state"] == "revoked"
        print(f"\nrevocation acknowledged by the origin -> the unredeemed ID-JAG refused at "
              f"the Resource AS: {refused_after * 1000:.1f} ms (its first presentation) -> "
              f"the local token refused at the partner RS: {inactive_after * 1000:.1f} ms")

        # 5. The origin down: the Resource AS fails closed and issues nothing.
        stop_server(domains.origin)
        body = refused(redeem(http, domains, spare, key), 503, "temporarily_unavailable")
        assert "cannot be reached" in body["error_description"]
        browser.close()

    for url in (domains.origin.database_url, domains.ras.database_url):
        engine = create_engine_for(url)
        try:
            report = audit.verify(engine)
            assert report.ok, report.first_break
        finally:
            engine.dispose()
