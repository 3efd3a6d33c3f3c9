"""RS-B through the whole kit (PROFILE.md section 2): every refusal of
:class:`~missionbound.enforce.rs.MissionGuard` on the wire, on both surfaces (FastAPI with
``require_mission`` + ``install``; Starlette behind ``MissionMiddleware``), with its status,
``WWW-Authenticate`` challenge (RFC 6750 section 3, RFC 9449 section 7.1, RFC 9728 section
5.1) and JSON body, and the route handler never reached; what an allowed request's handler
is given; the RFC 9728 metadata document; the decision log line.

Tokens are real ES256 JWTs (tests/enforce/rs/rs_support.py), proofs real DPoP JWTs
(tests/protocol/proofs.py), keys served by a static JWK Set (tests/enforce/rs/
test_rs_b_jwks.py serves them over HTTP)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from fastapi import Depends, FastAPI
from joserfc.jwk import OctKey
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from missionbound.enforce.rs import (
    MemoryReplayCache,
    MissionContext,
    MissionMiddleware,
    Protect,
    TrustedIssuer,
    require_mission,
)
from missionbound.enforce.rs.errors import BodyTooLarge
from missionbound.protocol.dpop import SUPPORTED_ALGS as DPOP_ALGS
from missionbound.protocol.dpop_nonces import issue_nonce
from missionbound.protocol.jwks import StaticKeys
from tests.enforce.rs.rs_support import (
    AGENT,
    BASE,
    CAP,
    IAT,
    ISSUER,
    METADATA_PATH,
    MISSION_ID,
    NOW,
    OTHER_RESOURCE,
    READ,
    READ_ENTRY,
    REPORTS,
    RESOURCE,
    SIGNER,
    SUBAGENT,
    SURFACES,
    WRITE,
    WRITE_ENTRY,
    Harness,
    Signer,
    assert_refused,
    bound_token,
    challenges,
    guard_for,
    harness,
    proof,
    sign_jws,
    token,
    token_claims,
)
from tests.protocol.proofs import DROP, b64url, forge_raw, generate_key

NONCE_SECRET = b"rs-nonce-secret-0123456789abcdef"


@pytest.fixture(params=SURFACES)
def surface(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def h(surface: str) -> Iterator[Harness]:
    with harness(surface) as built:
        yield built


def allowed(h: Harness, response: Any, reached: int = 1) -> MissionContext:
    assert response.status_code == 200, response.text
    assert len(h.seen) == reached
    return h.seen[-1]


# -- credentials (RFC 6750 section 2.1, 3.1) ----------------------------------------------------


def test_a_good_bearer_token_reaches_the_handler(h: Harness) -> None:
    response = h.send("GET", "/api/invoices", access_token=token())
    context = allowed(h, response)
    assert response.json() == {"subject": "alice", "acting_client": AGENT,
                               "mission": MISSION_ID, "jti": context.token.jti}


def test_no_token_is_challenged_in_every_accepted_scheme_without_an_error_code(
        h: Harness) -> None:
    response = h.send("GET", "/api/invoices")
    assert_refused(h, response, status=401, error=None, reason="missing_token",
                   schemes=("Bearer", "DPoP"))


@pytest.mark.parametrize("authorization", ["Basic YWxpY2U6YWxpY2U=", "Negotiate abc",
                                           "Bearer\tx"])
def test_an_unsupported_scheme_counts_as_no_credentials(h: Harness, authorization: str) -> None:
    response = h.send("GET", "/api/invoices", headers=[("Authorization", authorization)])
    assert_refused(h, response, status=401, error=None, reason="unsupported_scheme",
                   schemes=("Bearer", "DPoP"))


def test_two_authorization_headers_are_invalid_request(h: Harness) -> None:
    good = token()
    response = h.send("GET", "/api/invoices", headers=[("Authorization", f"Bearer {good}"),
                                                       ("Authorization", f"Bearer {good}")])
    assert_refused(h, response, status=400, error="invalid_request",
                   reason="malformed_authorization", schemes=("Bearer", "DPoP"))


@pytest.mark.parametrize("credentials", ["", "a b", "not*a*token", "x" * 70000])
def test_credentials_that_are_not_a_token_are_invalid_request(h: Harness,
                                                              credentials: str) -> None:
    response = h.send("GET", "/api/invoices",
                      headers=[("Authorization", f"Bearer {credentials}")])
    assert_refused(h, response, status=400, error="invalid_request",
                   reason="malformed_authorization")


# -- the access token (RFC 9068 section 4, PROFILE.md sections 2 and 8) -----------------------


def _tampered() -> str:
    header, _, signature = token().split(".")
    claims = token_claims(sub="mallory")
    return ".".join([header, b64url(json.dumps(claims).encode()), signature])


def _same_kid_other_key() -> str:
    return Signer(kid=SIGNER.kid).sign()  # a key of its own, published under the AS's kid


def _hs256_with_public_key() -> str:
    # The classic confusion: HMAC keyed with the bytes of the issuer's published key.
    secret = OctKey.import_key(json.dumps(SIGNER.jwk).encode())
    return sign_jws({"typ": "at+jwt", "alg": "HS256", "kid": SIGNER.kid},
                    json.dumps(token_claims()), secret)


def _alg_none() -> str:
    return forge_raw(json.dumps({"typ": "at+jwt", "alg": "none", "kid": SIGNER.kid}),
                     json.dumps(token_claims()), b"")


TOKEN_REFUSALS = {
    "wrong issuer": (lambda: token(iss="https://evil.example"), "wrong_issuer"),
    "wrong audience": (lambda: token(aud=OTHER_RESOURCE), "wrong_audience"),
    "expired": (lambda: token(iat=IAT - 600, exp=IAT - 31), "expired"),
    "not yet valid (nbf)": (lambda: token(nbf=IAT + 120), "not_yet_valid"),
    "issued in the future": (lambda: token(iat=IAT + 120, exp=IAT + 400),
                             "not_yet_valid"),
    "tampered payload": (_tampered, "bad_signature"),
    "another key under the same kid": (_same_kid_other_key, "bad_signature"),
    "an unknown kid": (lambda: Signer(kid="other-kid").sign(), "unknown_key"),
    "HS256 keyed with the public key": (_hs256_with_public_key, "unsupported_algorithm"),
    "alg none": (_alg_none, "unsupported_algorithm"),
    "an ID token (typ JWT)": (lambda: SIGNER.sign(header={"typ": "JWT"}), "wrong_type"),
    "no typ": (lambda: SIGNER.sign(header={"typ": DROP}), "wrong_type"),
    "no mission claim (downgrade by omission)": (lambda: token(mission=DROP),
                                                 "missing_mission"),
    "no authorization_details": (lambda: token(authorization_details=DROP), "missing_claim"),
    "not a JWS": (lambda: "abc.def.ghi", "malformed"),
}


@pytest.mark.parametrize("case", sorted(TOKEN_REFUSALS))
def test_a_token_that_does_not_verify_is_invalid_token(h: Harness, case: str) -> None:
    make, reason = TOKEN_REFUSALS[case]
    response = h.send("GET", "/api/invoices", access_token=make())
    assert_refused(h, response, status=401, error="invalid_token", reason=reason)


def test_a_refused_token_sent_with_the_dpop_scheme_is_challenged_in_dpop(h: Harness) -> None:
    key = generate_key()
    expired = bound_token(key, iat=IAT - 600, exp=IAT - 31)
    response = h.with_dpop(key, expired)
    assert_refused(h, response, status=401, error="invalid_token", reason="expired",
                   schemes=("DPoP",))


# -- sender constraint (RFC 9449 sections 4.3, 7) --------------------------------------------


def test_a_dpop_bound_token_with_its_proof_is_allowed(h: Harness) -> None:
    key = generate_key()
    context = allowed(h, h.with_dpop(key, bound_token(key)))
    assert context.token.jkt == key.thumbprint()


def test_a_dpop_bound_token_without_a_proof_is_refused(h: Harness) -> None:
    response = h.send("GET", "/api/invoices", access_token=bound_token(generate_key()),
                      scheme="DPoP")
    assert_refused(h, response, status=401, error="invalid_dpop_proof",
                   reason="missing_proof", schemes=("DPoP",))


def test_a_proof_signed_by_another_key_is_refused(h: Harness) -> None:
    key, other = generate_key(), generate_key()
    bound = bound_token(key)
    response = h.send("GET", "/api/invoices", access_token=bound, scheme="DPoP",
                      dpop=proof(other, bound))
    assert_refused(h, response, status=401, error="invalid_dpop_proof", reason="wrong_key",
                   schemes=("DPoP",))


def test_a_replayed_proof_is_refused_the_second_time(h: Harness) -> None:
    key = generate_key()
    bound = bound_token(key)
    once = proof(key, bound)
    first = h.send("GET", "/api/invoices", access_token=bound, scheme="DPoP", dpop=once)
    allowed(h, first)
    again = h.send("GET", "/api/invoices", access_token=bound, scheme="DPoP", dpop=once)
    assert_refused(h, again, status=401, error="invalid_dpop_proof", reason="replayed_proof",
                   schemes=("DPoP",), reached=1)
    # A new proof for the same token goes through.
    allowed(h, h.with_dpop(key, bound), reached=2)


def test_a_full_replay_cache_refuses_rather_than_forgets(surface: str) -> None:
    with harness(surface, guard_for(replay_cache=MemoryReplayCache(max_entries=1))) as built:
        key = generate_key()
        bound = bound_token(key)
        allowed(built, built.with_dpop(key, bound))
        response = built.with_dpop(key, bound)  # a new proof, and no room to remember it
        assert_refused(built, response, status=503, error="temporarily_unavailable",
                       reason="replay_cache_full", schemes=None, reached=1)
        assert response.headers["retry-after"] == "5"


@pytest.mark.parametrize("case", ["wrong htm", "wrong htu", "htu of another host", "no ath",
                                  "ath of another token", "stale iat", "two DPoP headers"])
def test_a_proof_not_made_for_this_request_is_refused(h: Harness, case: str) -> None:
    key = generate_key()
    bound = bound_token(key)
    overrides: dict[str, Any] = {
        "wrong htm": {"htm": "POST"},
        "wrong htu": {"htu": f"{BASE}/api/invoices/inv-1"},
        "htu of another host": {"htu": "https://evil.example/api/invoices"},
        "no ath": {"ath": DROP},
        "ath of another token": {"access_token": bound_token(key)},
        "stale iat": {"iat": IAT - 3600},
        "two DPoP headers": {},
    }[case]
    other_token = overrides.pop("access_token", bound)
    made = proof(key, other_token, **overrides)
    headers = [("DPoP", proof(key, bound))] if case == "two DPoP headers" else []
    response = h.send("GET", "/api/invoices", access_token=bound, scheme="DPoP", dpop=made,
                      headers=headers)
    assert_refused(h, response, status=401, error="invalid_dpop_proof", reason="invalid_proof",
                   schemes=("DPoP",))


def test_a_dpop_bound_token_sent_as_bearer_is_refused(h: Harness) -> None:
    key = generate_key()
    bound = bound_token(key)
    response = h.send("GET", "/api/invoices", access_token=bound, dpop=proof(key, bound))
    assert_refused(h, response, status=401, error="invalid_token",
                   reason="dpop_bound_token_as_bearer", schemes=("DPoP",))


def test_an_unbound_token_under_the_dpop_scheme_is_refused(h: Harness) -> None:
    key = generate_key()
    response = h.with_dpop(key, token())  # a perfectly good proof changes nothing
    assert_refused(h, response, status=401, error="invalid_token", reason="not_dpop_bound",
                   schemes=("DPoP",))


@pytest.fixture
def strict(surface: str) -> Iterator[Harness]:
    with harness(surface, guard_for(dpop_required=True)) as built:
        yield built


def test_dpop_required_refuses_a_bearer_token(strict: Harness) -> None:
    response = strict.send("GET", "/api/invoices", access_token=token())
    assert_refused(strict, response, status=401, error="invalid_token", reason="dpop_required",
                   schemes=("DPoP",))


def test_dpop_required_challenges_in_dpop_only_and_takes_a_bound_token(
        strict: Harness) -> None:
    missing = strict.send("GET", "/api/invoices")
    assert_refused(strict, missing, status=401, error=None, reason="missing_token",
                   schemes=("DPoP",))
    key = generate_key()
    allowed(strict, strict.with_dpop(key, bound_token(key)))
    assert strict.client.get(METADATA_PATH).json()["dpop_bound_access_tokens_required"] is True


@pytest.fixture
def nonced(surface: str) -> Iterator[Harness]:
    with harness(surface, guard_for(dpop_nonce_secret=NONCE_SECRET)) as built:
        yield built


def test_a_proof_without_the_server_nonce_gets_one_and_the_retry_is_allowed(
        nonced: Harness) -> None:
    key = generate_key()
    bound = bound_token(key)
    first = nonced.send("GET", "/api/invoices", access_token=bound, scheme="DPoP",
                        dpop=proof(key, bound))
    assert_refused(nonced, first, status=401, error="use_dpop_nonce", reason="use_dpop_nonce",
                   schemes=("DPoP",))
    nonce = first.headers["dpop-nonce"]
    assert nonce == issue_nonce(NONCE_SECRET, NOW)
    retry = nonced.send("GET", "/api/invoices", access_token=bound, scheme="DPoP",
                        dpop=proof(key, bound, nonce=nonce))
    allowed(nonced, retry)


def test_a_nonce_this_server_did_not_issue_is_refused(nonced: Harness) -> None:
    key = generate_key()
    bound = bound_token(key)
    forged = issue_nonce(b"another-secret-0123456789abcdef", NOW)
    response = nonced.send("GET", "/api/invoices", access_token=bound, scheme="DPoP",
                           dpop=proof(key, bound, nonce=forged))
    assert_refused(nonced, response, status=401, error="use_dpop_nonce",
                   reason="use_dpop_nonce", schemes=("DPoP",))
    assert response.headers["dpop-nonce"] == issue_nonce(NONCE_SECRET, NOW)


# -- authority (PROFILE.md sections 4, 6, 9) -------------------------------------------------


def post_entry(h: Harness, access_token: str, body: Any = DROP, *,
               content: bytes | None = None) -> Any:
    return h.send("POST", "/api/journal-entries", access_token=access_token, json_body=body,
                  content=content)


def entry_body(amount: str = "120.00", currency: str = "USD", **extra: Any) -> dict[str, Any]:
    return {"invoice_id": "inv-acme-1", "amount": amount, "currency": currency,
            "vendor": "acme", **extra}


def test_an_action_the_mission_does_not_grant_is_insufficient_scope(h: Harness) -> None:
    response = post_entry(h, token([READ_ENTRY]), entry_body())
    assert_refused(h, response, status=403, error="insufficient_scope",
                   reason="action_not_granted")


def test_a_token_granting_nothing_at_this_resource_is_insufficient_scope(h: Harness) -> None:
    elsewhere = [{**READ_ENTRY, "resource": OTHER_RESOURCE}]
    response = h.send("GET", "/api/invoices", access_token=token(elsewhere))
    assert_refused(h, response, status=403, error="insufficient_scope",
                   reason="resource_not_granted")


@pytest.mark.parametrize(("amount", "currency", "ok"), [
    ("500.01", "USD", False), ("500.00", "USD", True), ("500", "USD", True),
    ("499.99", "USD", True), ("0.01", "USD", True), ("100.00", "EUR", False),
    ("100000000000000000000.00", "USD", False),
])
def test_max_value_is_enforced_against_the_body(h: Harness, amount: str, currency: str,
                                                ok: bool) -> None:
    response = post_entry(h, token(), entry_body(amount, currency))
    if ok:
        context = allowed(h, response)
        assert context.entry == WRITE_ENTRY and context.action == WRITE
        assert h.bodies == [entry_body(amount, currency)]  # the route still read the body
    else:
        body = assert_refused(h, response, status=403, error="insufficient_scope",
                              reason="constraint_exceeded")
        assert "max_value" in body["error_description"]
        assert h.bodies == []


def test_an_allow_list_bound_by_the_route_is_enforced(h: Harness) -> None:
    entry = {**WRITE_ENTRY, "constraints": {"max_value": CAP, "vendors": ["acme"]}}
    allowed(h, post_entry(h, token([entry]), entry_body(vendor="acme")))
    response = post_entry(h, token([entry]), entry_body(vendor="globex"))
    assert_refused(h, response, status=403, error="insufficient_scope",
                   reason="constraint_exceeded", reached=1)


def test_a_constraint_key_this_resource_does_not_know_is_refused(h: Harness) -> None:
    entry = {**WRITE_ENTRY, "constraints": {"max_value": CAP, "recipients": ["a@b.example"]}}
    response = post_entry(h, token([entry]), entry_body())
    body = assert_refused(h, response, status=403, error="insufficient_scope",
                          reason="constraint_unknown")
    assert "recipients" in body["error_description"]


@pytest.mark.parametrize("constraints", [{"max_calls": 5}, {"max_total_value": CAP},
                                         {"aal": {"value": "urn:x", "freshness_seconds": 60}},
                                         {"max_value": CAP, "max_duration": "PT1H"}])
def test_a_constraint_this_resource_cannot_evaluate_is_refused(
        h: Harness, constraints: dict[str, Any]) -> None:
    entry = {**WRITE_ENTRY, "constraints": constraints}
    response = post_entry(h, token([entry]), entry_body())
    assert_refused(h, response, status=403, error="insufficient_scope",
                   reason="constraint_unevaluable")


def test_a_read_route_binding_nothing_refuses_a_max_value_it_cannot_check(h: Harness) -> None:
    # The Mission bounds the reads by max_value, the route binds no parameter to it: the
    # constraint is not "disclosure only", the request is refused.
    bounded = [{**READ_ENTRY, "constraints": {"max_value": CAP}}]
    response = h.send("GET", "/api/invoices", access_token=token(bounded))
    assert_refused(h, response, status=403, error="insufficient_scope",
                   reason="constraint_unevaluable")


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"amount": "1.00", "currency": "USD", "amount": "900.00"}', "invalid_body"),
    (b'{"amount": "1.00", "currency": "USD"', "invalid_body"),
    (b'{"amount": NaN, "currency": "USD"}', "invalid_body"),
    (b'"120.00"', "invalid_body"),
    (b'{"amount": 120.5, "currency": "USD", "vendor": "acme"}', "parameter_invalid"),
    (b'{"amount": "12O.00", "currency": "USD", "vendor": "acme"}', "parameter_invalid"),
    (b'{"currency": "USD", "vendor": "acme"}', "parameter_invalid"),
    (b"", "parameter_invalid"),
])
def test_a_body_the_bound_parameter_cannot_be_read_from_is_invalid_request(
        h: Harness, content: bytes, reason: str) -> None:
    response = post_entry(h, token(), content=content)
    assert_refused(h, response, status=400, error="invalid_request", reason=reason)


@pytest.fixture
def small(surface: str) -> Iterator[Harness]:
    with harness(surface, guard_for(max_body_bytes=256)) as built:
        yield built


def test_a_body_over_the_limit_is_413_without_a_challenge(small: Harness) -> None:
    big = entry_body(memo="x" * 300)
    response = post_entry(small, token(), big)
    assert_refused(small, response, status=413, error="invalid_request",
                   reason="body_too_large", schemes=None)
    allowed(small, post_entry(small, token(), entry_body()))


def test_a_chunked_body_is_not_read_past_the_limit(surface: str) -> None:
    """No Content-Length (chunked transfer): the guard stops reading at the limit instead
    of buffering whatever the client sends."""
    with harness(surface, guard_for(max_body_bytes=256)) as built:
        app = built.client.app
        pulled: list[int] = []
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            pulled.append(1)
            if len(pulled) > 1000:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"x" * 100, "more_body": True}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/api/journal-entries",
            "raw_path": b"/api/journal-entries", "root_path": "", "query_string": b"",
            "server": ("testserver", 80), "client": ("127.0.0.1", 50000),
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                        (b"authorization", f"Bearer {token()}".encode()),
                        (b"transfer-encoding", b"chunked")],
            "state": {},
        }
        asyncio.run(app(scope, receive, send))
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
        assert len(pulled) <= 4, f"{len(pulled)} chunks read for a 256-byte limit"
        assert built.seen == []


def test_labels_of_the_route_are_checked_against_data_classification(h: Harness) -> None:
    wide = [{"type": "mission_resource_access", "resource": RESOURCE, "actions": [REPORTS],
             "constraints": {"data_classification": ["finance", "public"]}}]
    narrow = [{**wide[0], "constraints": {"data_classification": ["public"]}}]
    allowed(h, h.send("GET", "/api/reports", access_token=token(wide)))
    response = h.send("GET", "/api/reports", access_token=token(narrow))
    assert_refused(h, response, status=403, error="insufficient_scope",
                   reason="constraint_exceeded", reached=1)


def test_two_entries_for_the_action_any_one_satisfied_allows(h: Harness) -> None:
    small_cap = {**WRITE_ENTRY, "constraints": {"max_value": {"amount": "10.00",
                                                               "currency": "USD"}}}
    euros = {**WRITE_ENTRY, "constraints": {"max_value": {"amount": "900.00",
                                                          "currency": "EUR"}}}
    context = allowed(h, post_entry(h, token([small_cap, euros]), entry_body("800.00", "EUR")))
    assert context.entry == euros
    refused = post_entry(h, token([small_cap, euros]), entry_body("800.00", "USD"))
    assert_refused(h, refused, status=403, error="insufficient_scope",
                   reason="constraint_exceeded", reached=1)


# -- the middleware's route table (fail closed) -------------------------------------------------


@pytest.fixture
def mw() -> Iterator[Harness]:
    with harness("starlette") as built:
        yield built


def test_a_route_the_middleware_does_not_declare_is_refused_after_authentication(
        mw: Harness) -> None:
    anonymous = mw.send("GET", "/api/undeclared")
    assert_refused(mw, anonymous, status=401, error=None, reason="missing_token",
                   schemes=("Bearer", "DPoP"))
    bad = mw.send("GET", "/api/undeclared", access_token=token(aud=OTHER_RESOURCE))
    assert_refused(mw, bad, status=401, error="invalid_token", reason="wrong_audience")
    response = mw.send("GET", "/api/undeclared", access_token=token())
    assert_refused(mw, response, status=403, error="insufficient_scope",
                   reason="route_not_declared")
    # Nor does a declared path with another method, or a path outside the table.
    for method, path in [("POST", "/api/invoices"), ("DELETE", "/api/invoices/inv-1"),
                         ("GET", "/api/invoices/"), ("GET", "/api/nowhere")]:
        response = mw.send(method, path, access_token=token())
        assert_refused(mw, response, status=403, error="insufficient_scope",
                       reason="route_not_declared")


def test_a_public_path_passes_without_a_token_and_without_a_context(mw: Harness) -> None:
    response = mw.send("GET", "/api/health")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert mw.seen == []


def test_declaring_the_root_public_opens_the_root_only() -> None:
    """(And a table written with a lower-case method still means GET.)"""
    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.url.path)

    guard = guard_for()
    app = Starlette(routes=[Route("/", page), Route("/api/invoices", page)], middleware=[
        Middleware(MissionMiddleware, guard=guard, routes=[Protect("get", "/api/invoices",
                                                                   READ)], public=["/"])])
    with TestClient(app, base_url=BASE) as client:
        assert client.get("/").status_code == 200
        assert client.get("/api/invoices").status_code == 401
        assert client.get("/api/invoices", headers={
            "Authorization": f"Bearer {token()}"}).status_code == 200


def test_a_websocket_is_closed(mw: Harness) -> None:
    with pytest.raises(WebSocketDisconnect) as closed, \
            mw.client.websocket_connect("/api/invoices"):
        pass
    assert closed.value.code == 1008


# -- delegation, read through act (PROFILE.md section 9) ------------------------------------------

DELEGABLE_READ = {**READ_ENTRY, "delegation": {"max_depth": 1,
                                               "allowed_delegates": [{"client_id": SUBAGENT}]}}


def test_a_delegate_the_entry_allows_is_the_acting_client(h: Harness) -> None:
    # client_id says demo-agent; the actor is read from act, never from client_id.
    act = {"sub": SUBAGENT, "iss": ISSUER}
    context = allowed(h, h.send("GET", "/api/invoices",
                                access_token=token([DELEGABLE_READ], act=act)))
    assert context.acting_client == SUBAGENT and context.token.client_id == AGENT
    assert [actor.sub for actor in context.actors] == [SUBAGENT]
    assert context.subject == "alice" and context.entry == DELEGABLE_READ


@pytest.mark.parametrize("case", ["delegate not allowed", "too deep", "entry not delegable",
                                  "client_id names the delegate, act another"])
def test_a_delegation_the_mission_does_not_allow_is_refused(h: Harness, case: str) -> None:
    deeper = {**DELEGABLE_READ, "delegation": {
        "max_depth": 1, "allowed_delegates": [{"client_id": SUBAGENT},
                                              {"client_id": "tool-runner"}]}}
    details, act, client_id = {
        "delegate not allowed": ([DELEGABLE_READ], {"sub": "outsider", "iss": ISSUER}, AGENT),
        "too deep": ([deeper], {"sub": "tool-runner", "iss": ISSUER,
                                "act": {"sub": SUBAGENT, "iss": ISSUER}}, "tool-runner"),
        "entry not delegable": ([READ_ENTRY], {"sub": SUBAGENT, "iss": ISSUER}, SUBAGENT),
        "client_id names the delegate, act another": (
            [DELEGABLE_READ], {"sub": "outsider", "iss": ISSUER}, SUBAGENT),
    }[case]
    response = h.send("GET", "/api/invoices",
                      access_token=token(details, act=act, client_id=client_id))
    assert_refused(h, response, status=403, error="insufficient_scope",
                   reason="delegation_not_permitted")


def test_a_two_deep_chain_within_max_depth_is_allowed(h: Harness) -> None:
    two = {**READ_ENTRY, "delegation": {"max_depth": 2, "allowed_delegates": [
        {"client_id": SUBAGENT}, {"client_id": "tool-runner"}]}}
    act = {"sub": "tool-runner", "iss": ISSUER, "act": {"sub": SUBAGENT, "iss": ISSUER}}
    context = allowed(h, h.send("GET", "/api/invoices", access_token=token([two], act=act)))
    assert context.acting_client == "tool-runner"
    assert [actor.sub for actor in context.actors] == ["tool-runner", SUBAGENT]


# -- what the handler is given -------------------------------------------------------------------


def test_the_context_carries_the_verified_token_and_the_granted_entry(h: Harness) -> None:
    key = generate_key()
    bound = bound_token(key)
    response = h.send("POST", "/api/journal-entries", access_token=bound, scheme="DPoP",
                      dpop=proof(key, bound, method="POST", path="/api/journal-entries"),
                      json_body=entry_body("499.99"))
    context = allowed(h, response)
    assert context.subject == "alice" and context.mission.id == MISSION_ID
    assert context.mission.origin == ISSUER
    assert context.actors == () and context.acting_client == AGENT
    assert context.action == WRITE and context.entry == WRITE_ENTRY
    assert context.state is None  # RS-B
    assert context.token.issuer == ISSUER and context.token.audiences == (RESOURCE,)
    assert context.facts is not None and context.facts.json_body == entry_body("499.99")
    assert h.bodies == [entry_body("499.99")]


def test_path_parameters_reach_the_context(h: Harness) -> None:
    context = allowed(h, h.send("GET", "/api/invoices/inv-acme-2", access_token=token()))
    assert context.facts is not None
    assert context.facts.path_params == {"invoice_id": "inv-acme-2"}
    assert context.action == READ and context.entry == READ_ENTRY


# -- RFC 9728 metadata ----------------------------------------------------------------------------


def test_the_protected_resource_metadata_is_served_at_the_well_known_path(h: Harness) -> None:
    response = h.client.get(METADATA_PATH)
    assert response.status_code == 200
    document = response.json()
    assert document["resource"] == RESOURCE
    assert document["authorization_servers"] == [ISSUER]
    assert document["dpop_signing_alg_values_supported"] == list(DPOP_ALGS)
    assert document["mission_bound_authorization_required"] is True
    assert document["mission_enforcement_tier"] == "RS-B"
    assert document["bearer_methods_supported"] == ["header"]
    assert document["authorization_details_types_supported"] == ["mission_resource_access"]
    assert document["dpop_bound_access_tokens_required"] is False
    # The keys the routes bind, and the labels one route carries.
    assert document["mission_constraints_supported"] == ["data_classification", "max_value",
                                                         "vendors"]
    assert "mission_state_staleness_seconds" not in document
    # The challenge of every refusal points to it.
    refused = h.send("GET", "/api/invoices")
    assert {params["resource_metadata"] for _, params in challenges(refused)} == {
        BASE + METADATA_PATH}
    assert h.seen == []


# -- the decision log -----------------------------------------------------------------------------


def test_every_decision_is_logged_with_mission_jti_and_decision(h: Harness) -> None:
    good, narrow = token(), token([READ_ENTRY])
    with structlog.testing.capture_logs() as logs:
        allowed(h, h.send("GET", "/api/invoices", access_token=good))
        post_entry(h, narrow, entry_body())
        h.send("GET", "/api/invoices")
    decisions = [entry for entry in logs if entry["event"] == "rs_decision"]
    assert len(decisions) == 3, logs
    allow, refuse, anonymous = decisions
    assert (allow["decision"], allow["mission"], allow["jti"], allow["action"],
            allow["reason"]) == ("allow", MISSION_ID, _jti(good), READ, None)
    assert allow["resource"] == RESOURCE and allow["client"] == AGENT
    assert allow["method"] == "GET" and allow["path"] == "/api/invoices"
    assert (refuse["decision"], refuse["mission"], refuse["jti"], refuse["reason"],
            refuse["status"]) == ("refuse", MISSION_ID, _jti(narrow), "action_not_granted", 403)
    assert (anonymous["decision"], anonymous["mission"], anonymous["jti"],
            anonymous["reason"]) == ("refuse", None, None, "missing_token")


def _jti(access_token: str) -> str:
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


# -- the errors module alone ---------------------------------------------------------------------


def test_a_413_says_nothing_about_credentials() -> None:
    refusal = BodyTooLarge("body_too_large", "too big")
    assert refusal.status == 413 and refusal.error == "invalid_request"
    response = guard_for().refusal_response(refusal)
    assert response.status_code == 413 and "www-authenticate" not in response.headers



# -- the URL a proof is made for (RFC 9449 section 4.3 item 9) ------------------------------------


@pytest.mark.parametrize("invoice_id", ["inv%20acme%201", "caf%C3%A9", "inv-%7E1"])
def test_a_proof_for_a_percent_encoded_path_is_compared_as_the_client_sent_it(
        h: Harness, invoice_id: str) -> None:
    key = generate_key()
    bound = bound_token(key)
    path = f"/api/invoices/{invoice_id}"
    context = allowed(h, h.with_dpop(key, bound, path=path))
    assert context.facts is not None and "%" not in context.facts.path_params["invoice_id"]


def test_behind_a_proxy_the_proof_names_the_public_url(surface: str) -> None:
    with harness(surface, guard_for(public_base_url="https://erp.example.com")) as built:
        key = generate_key()
        bound = bound_token(key)
        public = proof(key, bound, htu="https://erp.example.com/api/invoices")
        allowed(built, built.send("GET", "/api/invoices", access_token=bound, scheme="DPoP",
                                  dpop=public))
        # The address the proxy used is not the one the client signed for.
        internal = proof(key, bound)
        response = built.send("GET", "/api/invoices", access_token=bound, scheme="DPoP",
                              dpop=internal)
        assert_refused(built, response, status=401, error="invalid_dpop_proof",
                       reason="invalid_proof", schemes=("DPoP",), reached=1)


def test_the_proof_is_checked_against_the_resource_origin_not_the_host_header(
        h: Harness) -> None:
    # A proof made for another server that accepts the same token (another audience of it)
    # names that server; sending it here with a Host header to match must not pass.
    key = generate_key()
    bound = bound_token(key)
    elsewhere = proof(key, bound, htu="http://other.example/api/invoices")
    response = h.send("GET", "/api/invoices", access_token=bound, scheme="DPoP",
                      dpop=elsewhere, headers=[("Host", "other.example")])
    assert_refused(h, response, status=401, error="invalid_dpop_proof", reason="invalid_proof",
                   schemes=("DPoP",))


# -- several trusted issuers --------------------------------------------------------------------

OTHER_ISSUER = "https://other-as.example.test"


def test_each_issuer_is_checked_with_its_own_keys(surface: str) -> None:
    other = Signer(kid=SIGNER.kid)  # the same kid: only the iss decides which set is used
    guard = guard_for(issuers=[TrustedIssuer(ISSUER, keys=StaticKeys(SIGNER.jwks)),
                               TrustedIssuer(OTHER_ISSUER, keys=StaticKeys(other.jwks))])
    with harness(surface, guard) as built:
        context = allowed(built, built.send("GET", "/api/invoices", access_token=other.sign(
            token_claims(iss=OTHER_ISSUER))))
        assert context.token.issuer == OTHER_ISSUER
        allowed(built, built.send("GET", "/api/invoices", access_token=token()), reached=2)
        # Each key signs only for its own issuer.
        for forged in (other.sign(token_claims()), SIGNER.sign(token_claims(iss=OTHER_ISSUER))):
            response = built.send("GET", "/api/invoices", access_token=forged)
            assert_refused(built, response, status=401, error="invalid_token",
                           reason="bad_signature", reached=2)
        untrusted = built.send("GET", "/api/invoices",
                               access_token=token(iss="https://evil.example"))
        assert_refused(built, untrusted, status=401, error="invalid_token",
                       reason="wrong_issuer", reached=2)
        document = built.client.get(METADATA_PATH).json()
        assert document["authorization_servers"] == [ISSUER, OTHER_ISSUER]


# -- FastAPI without install() ------------------------------------------------------------------


def test_without_install_fastapi_still_answers_the_status_and_the_challenges() -> None:
    guard = guard_for()
    app = FastAPI()
    reached: list[MissionContext] = []
    dependency = Depends(require_mission(guard, READ))

    @app.get("/api/invoices")
    async def invoices(mission: MissionContext = dependency) -> dict[str, str]:
        reached.append(mission)
        return {"subject": mission.subject}

    with TestClient(app, base_url=BASE) as client:
        response = client.get("/api/invoices")
        assert response.status_code == 401
        assert response.json() == {"detail": {"error_description": response.json()["detail"][
            "error_description"], "reason": "missing_token"}}
        # One header, the challenges joined (RFC 9110 section 11.6.1).
        [value] = response.headers.get_list("www-authenticate")
        assert value.startswith("Bearer resource_metadata=") and ", DPoP algs=" in value
        assert client.get("/api/invoices", headers={
            "Authorization": f"Bearer {token()}"}).json() == {"subject": "alice"}
    assert len(reached) == 1
