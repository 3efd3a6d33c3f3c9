"""Every refusal of the approval flow (``/authorize``, ``/login``, ``/consent``: PROFILE.md
section 5, RFC 9126 section 4, RFC 9700 sections 4.1, 4.7, 4.11 and 4.16), on SQLite and
PostgreSQL.

A refusal the client's redirect URI may hear of is a redirect with ``error`` and RFC 9207
``iss``; any other is an HTML error page (never a redirect to an unverified URI). Either way
nothing in the store changes, and every page refuses to be framed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from missionbound.mission.lifecycle import State
from tests.e2e_support import parse_form
from tests.issuer.flow import (
    AGENT,
    ERP,
    ISSUER,
    NARROW,
    REDIRECT_URI,
    SUBAGENT,
    Flow,
    audit_verifies,
    callback_query,
    instant,
    last_audit_seq,
    mission_intent,
    refusals,
    snapshot,
)


def assert_page_headers(response: httpx.Response) -> None:
    """RFC 9700 section 4.16: no framing of the sign-in, consent or error pages."""
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


CSRF_REASON = "the form has expired or was not sent from this site"


def unchanged(flow: Flow, send: Callable[[], httpx.Response]) -> httpx.Response:
    """``send()`` changes nothing in the store (and leaves no refusal record: the approval
    pages are not client requests)."""
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    response = send()
    assert snapshot(flow.engine) == before, "the refused request changed the store"
    assert refusals(flow.engine, seq) == []
    return response


def error_page(flow: Flow, send: Callable[[], httpx.Response], status: int = 400,
               reason: str | None = None) -> httpx.Response:
    """An HTML error page, no redirect, nothing changed; ``reason`` is a fragment of the
    description shown (so the refusal is for the reason the test means)."""
    response = unchanged(flow, send)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "location" not in response.headers
    assert_page_headers(response)
    if reason is not None:
        assert reason in html.unescape(response.text), response.text
    return response


def error_redirect(flow: Flow, send: Callable[[], httpx.Response], error: str
                   ) -> dict[str, str]:
    response = unchanged(flow, send)
    assert response.status_code == 303, response.text
    query = callback_query(response)
    assert query["error"] == error and query["iss"] == ISSUER, query
    return query


def authorize(browser: httpx.Client, **params: str) -> httpx.Response:
    return browser.get("/authorize", params=params)


# -- /authorize without a usable pushed request ----------------------------------------------


def test_not_signed_in_goes_to_sign_in_with_a_relative_next(flow: Flow) -> None:
    pushed = flow.push_ok()
    response = unchanged(flow, lambda: authorize(
        flow.browser(), client_id=AGENT[0], request_uri=pushed.request_uri))
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/login?next=")
    target = parse_qs(urlsplit(location).query)["next"][0]
    assert target.startswith("/authorize?")
    assert parse_qs(urlsplit(target).query)["request_uri"] == [pushed.request_uri]


def test_a_front_channel_intent_is_a_page_even_for_a_registered_redirect(flow: Flow) -> None:
    # PROFILE.md section 3: refused with invalid_request. Without a pushed request nothing
    # vouches for the redirect URI (open registration), so it is never redirected to
    # (RFC 9700 section 4.11.2).
    intent = json.dumps(mission_intent(flow.now()))
    error_page(flow, lambda: authorize(
        flow.browser(), client_id=AGENT[0], redirect_uri=REDIRECT_URI, state="s1",
        response_type="code", mission_intent=intent))


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": AGENT[0], "redirect_uri": REDIRECT_URI + "/"},
        {"client_id": AGENT[0], "redirect_uri": "https://evil.example/callback"},
        {"client_id": AGENT[0]},
        {"client_id": "nobody", "redirect_uri": REDIRECT_URI},
        {"redirect_uri": REDIRECT_URI},
    ],
    ids=["trailing-slash", "foreign-uri", "no-redirect-uri", "unknown-client", "no-client"],
)
def test_a_front_channel_intent_with_an_untrusted_redirect_is_a_page(
        flow: Flow, params: dict[str, str]) -> None:
    # RFC 9700 section 4.11: never redirect to an unverified URI.
    intent = json.dumps(mission_intent(flow.now()))
    error_page(flow, lambda: authorize(flow.browser(), mission_intent=intent, **params))


def test_no_request_uri_is_a_page(flow: Flow) -> None:
    error_page(flow, lambda: authorize(
        flow.browser(), client_id=AGENT[0], redirect_uri=REDIRECT_URI, response_type="code",
        state="s2"))


def test_no_request_uri_and_no_redirect_uri_is_a_page(flow: Flow) -> None:
    error_page(flow, lambda: authorize(flow.browser(), client_id=AGENT[0]))


def test_an_unknown_request_uri_is_a_page(flow: Flow) -> None:
    browser = flow.signed_in("bob")
    error_page(flow, lambda: authorize(
        browser, client_id=AGENT[0],
        request_uri="urn:ietf:params:oauth:request_uri:never-pushed"),
        reason="unknown request_uri")


@pytest.mark.parametrize("client_id", [SUBAGENT[0], NARROW[0], "nobody"])
def test_another_clients_request_uri_is_a_page(flow: Flow, client_id: str) -> None:
    # RFC 9126 section 4: the request_uri is bound to the client that pushed it.
    pushed = flow.push_ok()
    browser = flow.signed_in("bob")
    reason = "unknown client_id" if client_id == "nobody" else "unknown request_uri"
    error_page(flow, lambda: authorize(browser, client_id=client_id,
                                       request_uri=pushed.request_uri), reason=reason)
    flow.approve(pushed.request_uri)  # its own client still can


def test_an_expired_request_uri_is_a_page(flow: Flow) -> None:
    pushed = flow.push_ok()
    flow.clock.advance(601)  # expires_in is 600
    browser = flow.signed_in("bob")
    response = error_page(flow, lambda: authorize(
        browser, client_id=AGENT[0], request_uri=pushed.request_uri))
    assert "expired" in response.text


def test_a_used_request_uri_is_a_page_and_its_form_cannot_be_replayed(flow: Flow) -> None:
    pushed = flow.push_ok()
    browser, hidden = flow.consent_form(pushed.request_uri)
    first = flow.decide(browser, hidden)
    assert first.status_code == 303 and "code" in callback_query(first)
    response = error_page(flow, lambda: authorize(
        browser, client_id=AGENT[0], request_uri=pushed.request_uri))
    assert "already used" in response.text
    # Issuance digest 16.21: replaying the consent POST approves nothing twice.
    error_page(flow, lambda: flow.decide(browser, hidden), reason="already used")
    mission = flow.mission_of(pushed.request_uri)
    assert mission.state is State.ACTIVE and mission.version == 2


# -- who may approve (PROFILE.md section 5, issuance digest 13.13) ---------------------------


def test_alice_may_not_approve_a_mission_for_bob(flow: Flow) -> None:
    pushed = flow.push_ok(login_hint="bob")
    alice = flow.signed_in("alice")
    error_page(flow, lambda: authorize(alice, client_id=AGENT[0],
                                       request_uri=pushed.request_uri), status=403,
               reason="alice may not approve Missions for bob")
    # Nor by posting the form bob was shown, with her own session's CSRF token.
    _, hidden = flow.consent_form(pushed.request_uri, "bob")
    alice_csrf = parse_form(flow.signed_in("alice").get("/login").text)[2]["csrf_token"]
    error_page(flow, lambda: flow.decide(alice, {**hidden, "csrf_token": alice_csrf}),
               status=403, reason="alice may not approve Missions for bob")
    assert flow.mission_of(pushed.request_uri).state is State.PENDING_APPROVAL


def test_bob_may_approve_for_alice_and_alice_for_herself(flow: Flow) -> None:
    for approver in ("bob", "alice"):
        pushed = flow.push_ok(login_hint="alice")
        assert "code" in flow.approve(pushed.request_uri, approver)
        mission = flow.mission_of(pushed.request_uri)
        assert mission.subject is not None and mission.subject.sub == "alice"
        assert mission.approver is not None and mission.approver.sub == approver


def test_a_login_hint_naming_no_user_is_refused_to_the_approver_only(flow: Flow) -> None:
    # PAR does not say whether a user exists (no user enumeration by clients); the
    # Approver's page does, and nothing is approved.
    pushed = flow.push_ok(login_hint="mallory")
    bob = flow.signed_in("bob")
    error_page(flow, lambda: authorize(bob, client_id=AGENT[0],
                                       request_uri=pushed.request_uri), status=403)
    assert flow.mission_of(pushed.request_uri).state is State.PENDING_APPROVAL


def test_without_login_hint_the_approver_is_the_subject(flow: Flow) -> None:
    pushed = flow.push_ok(login_hint=None)
    flow.approve(pushed.request_uri, "alice")
    mission = flow.mission_of(pushed.request_uri)
    assert mission.subject is not None and mission.subject.sub == "alice"


# -- CSRF (RFC 9700 section 4.7) -------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "x" * 43, "wrong"])
def test_sign_in_without_the_sessions_csrf_token_is_refused(
        flow: Flow, token: str | None) -> None:
    browser = flow.browser()
    _, _, hidden = parse_form(browser.get("/login").text)
    form = {**hidden, "username": "bob", "password": "bob"}
    if token is None:
        del form["csrf_token"]
    else:
        form["csrf_token"] = token
    error_page(flow, lambda: browser.post("/login", data=form), reason=CSRF_REASON)
    # Still signed out.
    pushed = flow.push_ok()
    response = authorize(browser, client_id=AGENT[0], request_uri=pushed.request_uri)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def _other_session_token(flow: Flow) -> str:
    return parse_form(flow.browser().get("/login").text)[2]["csrf_token"]


@pytest.mark.parametrize("case", ["missing", "empty", "another-session"])
def test_consent_without_the_sessions_csrf_token_is_refused(flow: Flow, case: str) -> None:
    pushed = flow.push_ok()
    browser, hidden = flow.consent_form(pushed.request_uri)
    form = dict(hidden)
    if case == "missing":
        del form["csrf_token"]
    else:
        form["csrf_token"] = "" if case == "empty" else _other_session_token(flow)
    error_page(flow, lambda: flow.decide(browser, form), reason=CSRF_REASON)
    # Nothing was spent: the genuine form still approves.
    assert flow.decide(browser, hidden).status_code == 303


def test_a_form_posted_from_another_browser_is_refused(flow: Flow) -> None:
    # The form is bound to the session that was shown the page, even for the same user.
    pushed = flow.push_ok()
    _, hidden = flow.consent_form(pushed.request_uri)
    other = flow.browser()
    flow.sign_in(other, "bob")
    error_page(flow, lambda: flow.decide(other, hidden), reason=CSRF_REASON)


# -- consent form tampering (issuance digest 13.9) -------------------------------------------


def _tampered(hidden: dict[str, str], name: str, flow: Flow) -> dict[str, str]:
    value = hidden[name]
    if name == "rendered_at":
        changed = value[:-3] + ("00Z" if not value.endswith("00Z") else "01Z")
    elif name == "request_uri":
        changed = flow.push_ok().request_uri  # another pending request of the same client
    elif name == "client_id":
        changed = NARROW[0]
    else:
        changed = value[:-1] + ("A" if value[-1] != "A" else "B")
    return {**hidden, name: changed}


@pytest.mark.parametrize("name", ["consent_mac", "disclosure_id", "rendered_at",
                                  "request_uri", "client_id"])
def test_an_altered_consent_form_is_refused(flow: Flow, name: str) -> None:
    pushed = flow.push_ok()
    browser, hidden = flow.consent_form(pushed.request_uri)
    form = _tampered(hidden, name, flow)
    reason = "unknown request_uri" if name == "client_id" else "the consent form was altered"
    error_page(flow, lambda: flow.decide(browser, form), reason=reason)
    assert flow.decide(browser, hidden).status_code == 303


@pytest.mark.parametrize("decision", [None, "", "maybe", "APPROVE"])
def test_a_decision_other_than_approve_or_reject_is_refused(
        flow: Flow, decision: str | None) -> None:
    pushed = flow.push_ok()
    browser, hidden = flow.consent_form(pushed.request_uri)
    form: dict[str, Any] = dict(hidden)
    if decision is not None:
        form["decision"] = decision
    error_page(flow, lambda: browser.post("/consent", data=form),
               reason="decision must be approve or reject")


def test_consent_after_signing_out_is_refused(flow: Flow) -> None:
    pushed = flow.push_ok()
    browser, hidden = flow.consent_form(pushed.request_uri)
    browser.cookies.clear()
    error_page(flow, lambda: flow.decide(browser, hidden), reason=CSRF_REASON)


# -- the approver's decisions ----------------------------------------------------------------


def test_reject_redirects_with_access_denied_and_the_mission_is_rejected(flow: Flow) -> None:
    pushed = flow.push_ok()
    browser, hidden = flow.consent_form(pushed.request_uri)
    before = snapshot(flow.engine)
    response = flow.decide(browser, hidden, "reject")
    assert response.status_code == 303
    query = callback_query(response)
    assert query["error"] == "access_denied"
    assert query["iss"] == ISSUER and query["state"] == pushed.state
    assert "code" not in query
    mission = flow.mission_of(pushed.request_uri)
    assert mission.state is State.REJECTED and mission.authority_hash is None
    after = snapshot(flow.engine)
    assert after["authorization_codes"] == before["authorization_codes"]
    assert after["derivation_counters"] == before["derivation_counters"]
    # The request_uri is spent: the same form cannot approve afterwards.
    error_page(flow, lambda: flow.decide(browser, hidden, "approve"), reason="already used")
    assert flow.mission_of(pushed.request_uri).state is State.REJECTED


def test_an_acr_the_sign_in_cannot_meet_is_access_denied(flow: Flow) -> None:
    # PROFILE.md section 5: a password sign-in does not meet an MFA acr.
    intent = mission_intent(flow.now(), context={"acr": "urn:missionbound:acr:mfa"})
    pushed = flow.push_ok(intent=intent)
    browser = flow.signed_in("bob")
    query = error_redirect(flow, lambda: authorize(
        browser, client_id=AGENT[0], request_uri=pushed.request_uri), "access_denied")
    assert query["state"] == pushed.state and "code" not in query
    assert flow.mission_of(pushed.request_uri).state is State.PENDING_APPROVAL


def test_an_aal_the_sign_in_cannot_meet_is_access_denied(flow: Flow) -> None:
    # PROFILE.md section 6: aal is enforced by the AS at approval.
    intent = mission_intent(flow.now(), context={
        "aal": {"value": "urn:missionbound:acr:mfa", "freshness_seconds": 600}})
    pushed = flow.push_ok(intent=intent)
    browser = flow.signed_in("bob")
    error_redirect(flow, lambda: authorize(
        browser, client_id=AGENT[0], request_uri=pushed.request_uri), "access_denied")
    assert flow.mission_of(pushed.request_uri).state is State.PENDING_APPROVAL


def test_an_aal_freshness_sends_a_stale_sign_in_back_to_login(flow: Flow) -> None:
    intent = mission_intent(flow.now(), context={
        "aal": {"value": "urn:missionbound:acr:password", "freshness_seconds": 60}})
    pushed = flow.push_ok(intent=intent)
    browser = flow.browser()
    flow.sign_in(browser, "bob")
    _, hidden = flow.consent_form(pushed.request_uri, browser=browser)
    flow.clock.advance(120)
    stale = authorize(browser, client_id=AGENT[0], request_uri=pushed.request_uri)
    assert stale.status_code == 303 and stale.headers["location"].startswith("/login?next=")
    # Nor does the form shown before go through with the stale sign-in.
    error_page(flow, lambda: flow.decide(browser, hidden), status=400,
               reason="the Mission asks for a recent sign-in: sign in again")
    assert flow.mission_of(pushed.request_uri).state is State.PENDING_APPROVAL
    flow.sign_in(browser, "bob")
    assert "code" in callback_query(flow.decide(*flow.consent_form(
        pushed.request_uri, browser=browser)))


def test_a_mission_that_expired_while_the_page_was_open_is_access_denied(flow: Flow) -> None:
    # RFC 6749 section 4.1.2.1: the pushed request vouches for the redirect URI, so the
    # client hears of it; nothing is approved and no code is issued.
    intent = mission_intent(flow.now(), mission_expiry=instant(flow.now() + timedelta(
        seconds=120)))
    pushed = flow.push_ok(intent=intent)
    browser, hidden = flow.consent_form(pushed.request_uri)
    flow.clock.advance(180)
    query = callback_query(flow.decide(browser, hidden))
    assert query["error"] == "access_denied" and "code" not in query
    assert query["state"] == pushed.state
    assert flow.mission_of(pushed.request_uri).state is not State.ACTIVE


def test_front_channel_extras_beside_a_request_uri_are_ignored(flow: Flow) -> None:
    # Issuance digest 16.14: only the pushed request counts.
    intent = mission_intent(flow.now(), resources=[ERP])
    pushed = flow.push_ok(scope="invoices.read")
    derived = flow.mission_of(pushed.request_uri).authority_set
    browser = flow.signed_in("bob")
    page = authorize(browser, client_id=AGENT[0], request_uri=pushed.request_uri,
                     scope="admin journal-entries.write", mission_intent=json.dumps(intent),
                     authorization_details=json.dumps([{
                         "type": "mission_resource_access", "resource": ERP,
                         "actions": ["journal-entries.write"]}]),
                     redirect_uri="https://evil.example/callback", state="planted")
    assert page.status_code == 200, page.text
    response = flow.decide(browser, parse_form(page.text)[2])
    query = callback_query(response)  # the registered redirect URI, the pushed state
    assert query["state"] == pushed.state and "code" in query
    assert flow.mission_of(pushed.request_uri).authority_set == derived


# -- page hardening (RFC 9700 sections 4.11 and 4.16) ----------------------------------------


def test_every_page_refuses_framing(flow: Flow) -> None:
    browser = flow.browser()
    assert_page_headers(browser.get("/login"))
    pushed = flow.push_ok()
    consent = flow.signed_in("bob").get(
        "/authorize", params={"client_id": AGENT[0], "request_uri": pushed.request_uri})
    assert consent.status_code == 200
    assert_page_headers(consent)
    assert_page_headers(authorize(browser, client_id="nobody"))


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example",
                                    "/\\evil.example", "\\\\evil.example",
                                    "javascript:alert(1)", "http:/evil.example"])
def test_sign_in_never_redirects_off_site(flow: Flow, target: str) -> None:
    browser = flow.browser()
    page = browser.get("/login", params={"next": target})
    _, _, hidden = parse_form(page.text)
    assert hidden["next"] == "/"
    response = browser.post("/login", data={**hidden, "next": target, "username": "bob",
                                            "password": "bob"})
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_the_approval_flow_left_a_verifiable_audit_log(flow: Flow) -> None:
    # Run last in the module.
    audit_verifies(flow.engine)
