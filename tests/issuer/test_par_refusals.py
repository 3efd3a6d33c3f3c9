"""Every refusal at the PAR endpoint (RFC 9126, PROFILE.md section 3, issuance digest 2.3 and
16.1-12), on SQLite and PostgreSQL: the status and ``error`` the spec names, nothing stored
(no Mission, no pushed request), and a ``par.refused`` audit record whenever the client was
authenticated (an unauthenticated request leaves none: no log flooding)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.issuer.flow import (
    ERP,
    MCP,
    NARROW,
    REDIRECT_URI,
    REPORTING,
    Flow,
    audit_verifies,
    instant,
    mission_intent,
    refused,
)
from tests.protocol.proofs import generate_key

PAR_REFUSED = "par.refused"


def refused_at_par(flow: Flow, error: str = "invalid_request", *, status: int = 400,
                   audited: str | None = PAR_REFUSED, **push: Any) -> dict[str, Any]:
    response = refused(flow, lambda: flow.push(**push), status=status, error=error,
                       audited=audited)
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def test_a_valid_request_is_accepted(flow: Flow) -> None:
    # The baseline every refusal below departs from (issuance digest 16.1).
    response = flow.push()
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    assert body["expires_in"] == 600


# -- client authentication (RFC 6749 section 2.3) ---------------------------------------------


def test_no_client_authentication_is_invalid_client(flow: Flow) -> None:
    refused_at_par(flow, "invalid_client", status=401, audited=None, auth=None)


def test_a_wrong_secret_is_invalid_client_with_a_basic_challenge(flow: Flow) -> None:
    response = refused(flow, lambda: flow.push(auth=("demo-agent", "wrong")), status=401,
                       error="invalid_client", audited=None)
    # RFC 6749 section 5.2: HTTP Basic was tried, so the 401 carries its challenge.
    assert response.headers["www-authenticate"].startswith("Basic")


def test_an_unknown_client_is_invalid_client(flow: Flow) -> None:
    refused_at_par(flow, "invalid_client", status=401, audited=None, auth=("nobody", "x"))


# -- the request's OAuth parameters -----------------------------------------------------------


@pytest.mark.parametrize("response_type", ["token", "code id_token", "", None])
def test_response_type_must_be_code(flow: Flow, response_type: str | None) -> None:
    refused_at_par(flow, response_type=response_type)


@pytest.mark.parametrize(
    "redirect_uri",
    [
        None,
        REDIRECT_URI + "/",  # trailing slash
        REDIRECT_URI + "/x",  # a path suffix
        REDIRECT_URI + "?next=1",  # an added query
        REDIRECT_URI + "#fragment",
        "http://127.0.0.1:8765/Callback",  # case
        "http://evil@127.0.0.1:8765/callback",  # userinfo
        "http://localhost:8765/callback",  # a loopback name, not a loopback IP
        "https://127.0.0.1:8765/callback",
        "http://127.0.0.2:8765/callback",
    ],
)
def test_redirect_uri_must_be_registered_exactly(flow: Flow, redirect_uri: str | None) -> None:
    # RFC 9700 section 4.1: exact string match; the one exception is below.
    refused_at_par(flow, redirect_uri=redirect_uri)


def test_only_the_port_of_a_loopback_ip_redirect_may_differ(flow: Flow) -> None:
    # RFC 8252 section 7.3: a native app listens on whatever port it gets; the answer goes
    # to the port it pushed.
    moved = "http://127.0.0.1:49152/callback"
    pushed = flow.push_ok(redirect_uri=moved)
    browser, hidden = flow.consent_form(pushed.request_uri)
    response = flow.decide(browser, hidden)
    assert response.status_code == 303
    assert response.headers["location"].startswith(moved + "?code=")


@pytest.mark.parametrize(
    "challenge",
    [None, "", "a" * 42, "a" * 129, "a" * 42 + "!", "a" * 42 + "=", "a" * 42 + " "],
    ids=["missing", "empty", "short", "long", "bang", "padding", "space"],
)
def test_code_challenge_must_be_43_to_128_unreserved_characters(
        flow: Flow, challenge: str | None) -> None:
    refused_at_par(flow, code_challenge=challenge)


@pytest.mark.parametrize("method", ["plain", None, "S512", "s256"])
def test_code_challenge_method_must_be_s256(flow: Flow, method: str | None) -> None:
    # PROFILE.md section 5: plain is refused (RFC 9700 section 2.1.1).
    refused_at_par(flow, code_challenge_method=method)


def test_a_pushed_request_uri_is_refused(flow: Flow) -> None:
    # RFC 9126 section 2.1: request_uri must not be pushed.
    refused_at_par(flow, request_uri="urn:ietf:params:oauth:request_uri:planted")


def test_a_request_object_is_refused(flow: Flow) -> None:
    refused_at_par(flow, request="eyJhbGciOiJub25lIn0.e30.")


@pytest.mark.parametrize("name", ["state", "redirect_uri", "mission_intent", "scope",
                                  "code_challenge"])
def test_a_repeated_parameter_is_refused(flow: Flow, name: str) -> None:
    params = flow.par_params(scope="invoices.read")
    refused_at_par(flow, pairs=[(name, str(params[name]))], scope="invoices.read")


def test_an_unusable_login_hint_is_refused(flow: Flow) -> None:
    refused_at_par(flow, login_hint="a" * 256)


def test_a_json_body_is_refused(flow: Flow) -> None:
    # RFC 9126 section 2.1: application/x-www-form-urlencoded only. The body is refused
    # before the client is authenticated, so there is nobody to audit.
    body = json.dumps(flow.par_params()).encode()
    refused_at_par(flow, audited=None, content=body,
                   headers={"Content-Type": "application/json"})


def test_a_body_that_is_not_utf8_is_refused(flow: Flow) -> None:
    refused_at_par(flow, audited=None, content=b"response_type=code&state=\xff\xfe",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})


# -- mission_intent (PROFILE.md section 3, issuance digest 16.2-12) ---------------------------


def _raw(text: str) -> Callable[[Flow], str]:
    return lambda _: text


def _intent(**overrides: Any) -> Callable[[Flow], str]:
    return lambda flow: json.dumps(mission_intent(flow.now(), **overrides), ensure_ascii=False)


def _context(**members: Any) -> Callable[[Flow], str]:
    return _intent(context={"max_derivations": 5, **members})


def _duplicate_goal(flow: Flow) -> str:
    text = json.dumps(mission_intent(flow.now()))
    return text[:-1] + ', "goal": "a second goal"}'


def _expiry(delta: timedelta) -> Callable[[Flow], str]:
    return lambda flow: json.dumps(
        mission_intent(flow.now(), mission_expiry=instant(flow.now() + delta)))


# case -> (the intent, a fragment of the error_description: refused for the right reason)
INVALID_INTENTS: dict[str, tuple[Callable[[Flow], str], str]] = {
    "empty": (_raw(""), "not valid JSON"),
    "not-json": (_raw("{not json"), "not valid JSON"),
    "array": (_raw("[]"), "must be a JSON object"),
    "string": (_raw('"reconcile"'), "must be a JSON object"),
    "null": (_raw("null"), "must be a JSON object"),
    "duplicate-member": (_duplicate_goal, "duplicate member name 'goal'"),
    "duplicate-nested-member": (
        lambda flow: json.dumps(mission_intent(flow.now())).replace(
            '"max_derivations": 50', '"max_derivations": 50, "max_derivations": 60'),
        "duplicate member name 'max_derivations'"),
    "float": (_context(max_value={"amount": 500.0, "currency": "USD"}), "500.0"),
    "float-max-derivations": (
        lambda flow: json.dumps(mission_intent(flow.now())).replace(
            '"max_derivations": 50', '"max_derivations": 5.0'),
        "5.0 is not an integer"),
    "unknown-member": (_intent(authority_hash="sha-256:" + "A" * 43),
                       "unknown mission_intent member 'authority_hash'"),
    "unknown-context-member": (_context(favourite_colour="blue"),
                               "unknown context member 'favourite_colour'"),
    "too-big": (_intent(constraints=["x" * 1000] * 20), "the limit is 16384"),
    "missing-goal": (_intent(goal=None), "goal is required"),
    "missing-resources": (_intent(resources=None), "resources is required"),
    "missing-expiry": (_intent(mission_expiry=None), "mission_expiry is required"),
    "goal-4097": (_intent(goal="é" * 4097), "4097 characters"),
    "empty-resources": (_intent(resources=[]), "non-empty array"),
    "relative-resource": (_intent(resources=["/demo/erp"]), "absolute"),
    "resource-with-fragment": (_intent(resources=[ERP + "#invoices"]), "fragment"),
    "expiry-in-the-past": (_expiry(timedelta(minutes=-1)), "must be in the future"),
    "expiry-malformed": (_intent(mission_expiry="2026-12-31"), "RFC 3339"),
    "max-derivations-0": (_context(max_derivations=0), "max_derivations"),
    "max-derivations-negative": (_context(max_derivations=-1), "max_derivations"),
    "max-derivations-true": (_context(max_derivations=True), "max_derivations"),
    "max-derivations-string": (_context(max_derivations="5"), "max_derivations"),
    "purpose-not-registered-for-client": (_intent(purpose=REPORTING),
                                          "not registered for this client"),
    "purpose-unknown": (_intent(purpose="https://missionbound.dev/purposes/unknown"),
                        "not in the deployment purpose registry"),
}


@pytest.mark.parametrize("case", sorted(INVALID_INTENTS))
def test_an_invalid_intent_is_invalid_request(flow: Flow, case: str) -> None:
    make, reason = INVALID_INTENTS[case]
    body = refused_at_par(flow, intent=make(flow))
    assert reason in body["error_description"], body


def test_a_missing_intent_is_invalid_request(flow: Flow) -> None:
    # This AS issues Mission-bound tokens only.
    refused_at_par(flow, mission_intent=None)


@pytest.mark.parametrize(
    "case",
    ["goal-4096-multibyte", "max-derivations-1", "x-extension-member"],
)
def test_the_limits_themselves_are_accepted(flow: Flow, case: str) -> None:
    intent = {
        "goal-4096-multibyte": mission_intent(flow.now(), goal="é" * 4096),
        "max-derivations-1": mission_intent(flow.now(), context={"max_derivations": 1}),
        "x-extension-member": mission_intent(flow.now(), x_ticket="AP-123"),
    }[case]
    response = flow.push(intent=intent)
    assert response.status_code == 201, response.text


# -- authority: catalog, client registration, authorization_details, resource ---------------


def _details(*entries: dict[str, Any]) -> str:
    return json.dumps([{"type": "mission_resource_access", **entry} for entry in entries])


def test_a_resource_outside_the_catalog_is_invalid_authorization_details(flow: Flow) -> None:
    refused_at_par(flow, "invalid_authorization_details",
                   intent=mission_intent(flow.now(), resources=["https://unknown.example.net"]))


def test_a_resource_the_client_is_not_registered_for_is_refused(flow: Flow) -> None:
    # narrow-agent is registered for the ERP API only.
    refused_at_par(flow, "invalid_authorization_details", auth=NARROW)


def test_the_narrow_client_may_push_for_its_own_resource(flow: Flow) -> None:
    intent = mission_intent(flow.now(), resources=[ERP])
    response = flow.push(auth=NARROW, intent=intent)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "details",
    [
        _details({"resource": ERP, "actions": ["invoices.delete"]}),
        _details({"resource": ERP, "actions": ["invoices.read"], "constraints": {"weird": 1}}),
        _details({"resource": "https://unknown.example.net", "actions": ["invoices.read"]}),
        json.dumps([{"type": "payment_initiation", "resource": ERP,
                     "actions": ["invoices.read"]}]),
        json.dumps({"type": "mission_resource_access"}),
        json.dumps([1]),
    ],
    ids=["unknown-action", "unknown-constraint-key", "resource-outside-intent",
         "other-type", "not-an-array", "not-objects"],
)
def test_bad_authorization_details_are_invalid_authorization_details(
        flow: Flow, details: str) -> None:
    # PROFILE.md section 3: refused at PAR, never later.
    refused_at_par(flow, "invalid_authorization_details", authorization_details=details)


def test_authorization_details_for_a_resource_outside_the_intent_are_refused(
        flow: Flow) -> None:
    intent = mission_intent(flow.now(), resources=[ERP])
    refused_at_par(flow, "invalid_authorization_details", intent=intent,
                   authorization_details=_details({"resource": MCP,
                                                   "actions": ["list_invoices"]}))


def test_authorization_details_that_are_not_json_are_invalid_request(flow: Flow) -> None:
    refused_at_par(flow, authorization_details="[{")


@pytest.mark.parametrize("resource", [MCP, "https://other.example.org"])
def test_a_resource_parameter_outside_the_intent_is_invalid_target(
        flow: Flow, resource: str) -> None:
    # RFC 8707 section 2.
    intent = mission_intent(flow.now(), resources=[ERP])
    refused_at_par(flow, "invalid_target", intent=intent, resource=resource)


def test_resource_may_repeat(flow: Flow) -> None:
    # RFC 8707 section 2: the one repeatable parameter.
    response = flow.push(pairs=[("resource", ERP), ("resource", MCP)])
    assert response.status_code == 201, response.text


def test_a_scope_never_widens(flow: Flow) -> None:
    # Issuance digest 16.15: a scope naming an action the catalog lacks grants nothing.
    pushed = flow.push_ok(scope="invoices.read invoices.delete")
    authority = flow.mission_of(pushed.request_uri).authority_set
    assert [entry["actions"] for entry in authority] == [["invoices.read"]]
    assert {entry["resource"] for entry in authority} == {ERP}


# -- DPoP at PAR (RFC 9449 section 10.1) ------------------------------------------------------


def test_a_dpop_jkt_that_is_not_the_proofs_key_is_refused(flow: Flow) -> None:
    proof = flow.dpop(generate_key(), path="/par")
    other = generate_key().thumbprint()
    refused_at_par(flow, "invalid_dpop_proof", dpop=proof, dpop_jkt=other)


def test_a_malformed_dpop_jkt_is_invalid_request(flow: Flow) -> None:
    refused_at_par(flow, dpop_jkt="not a thumbprint")


def test_a_dpop_proof_for_another_endpoint_is_refused(flow: Flow) -> None:
    proof = flow.dpop(generate_key(), path="/token")
    refused_at_par(flow, "invalid_dpop_proof", dpop=proof)


def test_a_dpop_jkt_matching_the_proof_is_accepted(flow: Flow) -> None:
    key = generate_key()
    response = flow.push(dpop=flow.dpop(key, path="/par"), dpop_jkt=key.thumbprint())
    assert response.status_code == 201, response.text


# -- the whole module -------------------------------------------------------------------------


def test_refusals_left_a_verifiable_audit_log(flow: Flow) -> None:
    # Run last in the module: every refusal above wrote its audit record after its
    # transaction rolled back; the chain and every Mission's anchors still verify.
    audit_verifies(flow.engine)
