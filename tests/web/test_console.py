"""The web console (``/console/``) over in-process HTTP: the real app on a real database (a
SQLite file and a PostgreSQL schema, the module-scoped ``flow`` of tests/issuer), Missions
made by the real PAR -> consent -> token flow, people signed in through the real ``/login``.

Every refused change is checked to have changed nothing in the store
(:func:`tests.issuer.flow.snapshot`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from missionbound.store.models import AuditRecord, Mission
from missionbound.tenant import SecretHash, User
from missionbound.web.app import create_app
from tests.e2e_support import Form, parse_forms
from tests.issuer.conftest import flow, flow_database_url  # noqa: F401 (the shared fixtures)
from tests.issuer.flow import (
    ERP,
    ISSUER,
    NARROW,
    Flow,
    Grant,
    instant,
    last_audit_seq,
    mission_intent,
    refusals,
    snapshot,
)

MISSION_LINK = re.compile(r'href="/console/missions/(msn_[A-Za-z0-9_-]+)"')
UNKNOWN_ID = "msn_" + "A" * 32


# -- helpers ----------------------------------------------------------------------------------


def signed_in(flow: Flow, username: str) -> TestClient:  # noqa: F811
    """A new browser signed in as ``username`` through /login, sent back to the console."""
    browser = flow.browser()
    flow.sign_in(browser, username, next_path="/console/")
    return browser


def listed(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return MISSION_LINK.findall(response.text)


def form_of(html: str, action_suffix: str) -> Form:
    [form] = [f for f in parse_forms(html) if f.action.endswith(action_suffix)]
    return form


def lifecycle_form(browser: TestClient, mission_id: str) -> Form:
    page = browser.get(f"/console/missions/{mission_id}")
    assert page.status_code == 200, page.text
    return form_of(page.text, "/lifecycle")


def change(browser: TestClient, mission_id: str, button: str, *,
           reason: str | None = "routine check", confirm: str | None = "yes",
           **overrides: str | None) -> httpx.Response:
    """Send the Mission page's lifecycle form as a browser would (the ``button`` clicked;
    ``overrides`` replace fields, None leaves one out)."""
    form = lifecycle_form(browser, mission_id)
    data: dict[str, Any] = {**form.hidden, "operation": button, "reason": reason,
                            "confirm": confirm, **overrides}
    return browser.post(f"/console/missions/{mission_id}/lifecycle",
                        data={k: v for k, v in data.items() if v is not None})


def changed_ok(browser: TestClient, mission_id: str, operation: str, **kwargs: Any) -> str:
    """Change the Mission; follow the 303 back to its page and return that page."""
    response = change(browser, mission_id, operation, **kwargs)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location == f"/console/missions/{mission_id}?done={operation}", location
    page = browser.get(location)
    assert page.status_code == 200
    return page.text


def plain(html: str) -> str:
    """The page's text as a person reads it: no tags, entities decoded, spaces collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", "", html)).split())


def state_of(html: str) -> str:
    found = re.search(r'<p class="mb-state-line"><span class="mb-state mb-state-([a-z_]+)">',
                      html)
    assert found, html
    return found.group(1)


def buttons(html: str) -> list[str]:
    forms = [f for f in parse_forms(html) if f.action.endswith("/lifecycle")]
    return [value for form in forms for name, value in form.buttons if name == "operation"]


def refused_unchanged(flow: Flow, send: Any, status: int, words: str) -> httpx.Response:  # noqa: F811
    before = snapshot(flow.engine)
    response = send()
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert words.lower() in plain(response.text).lower(), response.text
    assert snapshot(flow.engine) == before, "a refused console request changed the store"
    return response


def mission_for(flow: Flow, subject: str = "alice", **push: Any) -> Grant:  # noqa: F811
    """An approved Mission (bob approves, for himself or for alice) with its first token."""
    return flow.grant(login_hint=subject, **push)


@pytest.fixture(scope="module")
def bob(flow: Flow) -> Iterator[TestClient]:  # noqa: F811
    browser = signed_in(flow, "bob")
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def alice(flow: Flow) -> Iterator[TestClient]:  # noqa: F811
    browser = signed_in(flow, "alice")
    yield browser
    browser.close()


# -- signing in -------------------------------------------------------------------------------


def test_the_console_asks_to_sign_in_and_comes_back(flow: Flow) -> None:  # noqa: F811
    browser = flow.browser()
    response = browser.get("/console/")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=" + quote("/console/", safe="")
    deep = browser.get(f"/console/missions/{UNKNOWN_ID}?after=3")
    assert deep.status_code == 303
    assert deep.headers["location"] == "/login?next=" + quote(
        f"/console/missions/{UNKNOWN_ID}?after=3", safe="")
    # The one sign-in form, with the console as where to go next.
    login = browser.get(deep.headers["location"])
    assert login.status_code == 200
    [form] = parse_forms(login.text)
    assert form.action == "/login"
    assert form.hidden["next"] == f"/console/missions/{UNKNOWN_ID}?after=3"
    done = browser.post("/login", data={**form.hidden, "username": "bob", "password": "bob"})
    assert done.status_code == 303
    assert done.headers["location"] == f"/console/missions/{UNKNOWN_ID}?after=3"
    assert browser.get("/console/").status_code == 200


def test_an_anonymous_change_is_sent_to_sign_in_and_changes_nothing(flow: Flow) -> None:  # noqa: F811
    grant = mission_for(flow)
    browser = flow.browser()
    response = browser.post(f"/console/missions/{grant.mission_id}/lifecycle",
                            data={"operation": "revoke", "reason": "x", "confirm": "yes"})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")
    assert flow.mission(grant.mission_id).state.value == "active"


def test_the_demo_note_and_the_signed_in_person(bob: TestClient) -> None:
    page = bob.get("/console/")
    assert page.status_code == 200
    text = unescape(page.text)
    assert "the password of each demo user equals the user name" in text
    assert "Signed in as" in text and "Bob Manager" in text and "administrator" in text


def test_sign_out_needs_the_csrf_token_and_ends_the_session(flow: Flow) -> None:  # noqa: F811
    browser = signed_in(flow, "alice")
    page = browser.get("/console/")
    form = form_of(page.text, "/console/sign-out")
    refused = browser.post("/console/sign-out", data={})
    assert refused.status_code == 400
    assert browser.get("/console/").status_code == 200  # still signed in
    out = browser.post("/console/sign-out", data=form.hidden)
    assert out.status_code == 303
    assert out.headers["location"].startswith("/login?next=")
    assert browser.get("/console/").status_code == 303


# -- who sees what ----------------------------------------------------------------------------


def test_an_administrator_sees_every_mission(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    for_alice = mission_for(flow, "alice")
    for_bob = mission_for(flow, "bob")
    pending = flow.push_ok(login_hint=None)  # no Subject until approval
    pending_id = flow.mission_of(pending.request_uri).mission_id
    ids = listed(bob.get("/console/"))
    assert {for_alice.mission_id, for_bob.mission_id, pending_id} <= set(ids)
    # Newest first.
    assert ids.index(pending_id) < ids.index(for_bob.mission_id) < ids.index(
        for_alice.mission_id)
    assert "As an administrator you see every Mission." in bob.get("/console/").text


def test_alice_sees_only_her_missions(flow: Flow, alice: TestClient) -> None:  # noqa: F811
    hers = mission_for(flow, "alice")
    his = mission_for(flow, "bob")
    pending = flow.push_ok(login_hint=None)
    pending_id = flow.mission_of(pending.request_uri).mission_id
    ids = listed(alice.get("/console/"))
    assert hers.mission_id in ids
    assert his.mission_id not in ids and pending_id not in ids
    for mission_id in ids:
        record = flow.mission(mission_id)
        assert record.subject is not None and record.subject.sub == "alice"
    # Filters cannot widen what she sees.
    assert his.mission_id not in listed(alice.get("/console/", params={"subject": "bob"}))
    assert alice.get(f"/console/missions/{hers.mission_id}").status_code == 200


def test_unknown_and_hidden_missions_get_the_same_404(flow: Flow, alice: TestClient) -> None:  # noqa: F811
    his = mission_for(flow, "bob")
    hidden = alice.get(f"/console/missions/{his.mission_id}")
    unknown = alice.get(f"/console/missions/{UNKNOWN_ID}")
    malformed = alice.get("/console/missions/not-a-mission-id")
    assert hidden.status_code == unknown.status_code == malformed.status_code == 404
    assert hidden.text == unknown.text == malformed.text
    assert his.mission_id not in hidden.text
    assert "There is no Mission with this id that you may see." in unescape(hidden.text)
    # A change sent to a hidden Mission: the same 404, nothing changed.
    form = form_of(alice.get("/console/").text, "/console/sign-out")  # her CSRF token
    response = refused_unchanged(
        flow, lambda: alice.post(f"/console/missions/{his.mission_id}/lifecycle",
                                 data={**form.hidden, "operation": "revoke",
                                       "reason": "not mine", "confirm": "yes"}),
        404, "There is no Mission with this id that you may see.")
    assert response.text == unknown.text


def test_a_person_with_no_missions_reads_a_friendly_sentence(flow: Flow) -> None:  # noqa: F811
    # The same database and clock, a tenant with one more user: carol, who has no Missions.
    tenant = flow.issuer.tenant
    carol = User(username="carol", display_name="Carol Nobody", roles=frozenset(),
                 may_approve_for=frozenset(), password_hash=SecretHash.of("carol", "scrypt"))
    app = create_app(flow.issuer.settings,
                     tenant=dataclasses.replace(tenant, users={**tenant.users, "carol": carol}),
                     engine=flow.engine)
    app.state.issuer.clock = flow.clock
    mission_for(flow, "alice")
    # Not started as a context manager: no lifespan, so no background tasks of its own.
    browser = TestClient(app, base_url=ISSUER, follow_redirects=False)
    flow.sign_in(browser, "carol", next_path="/console/")
    page = browser.get("/console/")
    assert listed(page) == []
    assert "You have no Missions yet." in page.text
    assert "<table" not in page.text
    browser.close()


# -- the list -------------------------------------------------------------------------------


def test_filters_by_state_subject_and_client(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    active = mission_for(flow, "alice")
    suspended = mission_for(flow, "alice")
    changed_ok(bob, suspended.mission_id, "suspend")
    for_bob = mission_for(flow, "bob")
    narrow = flow.push_ok(auth=NARROW, intent=mission_intent(flow.now(), resources=[ERP]))
    narrow_id = flow.mission_of(narrow.request_uri).mission_id  # pending, for alice
    by_state = listed(bob.get("/console/", params={"state": "suspended"}))
    assert suspended.mission_id in by_state and active.mission_id not in by_state
    for mission_id in by_state:
        assert flow.mission(mission_id).state.value == "suspended"
    by_subject = listed(bob.get("/console/", params={"subject": "bob"}))
    assert for_bob.mission_id in by_subject and active.mission_id not in by_subject
    by_client = listed(bob.get("/console/", params={"client": NARROW[0]}))
    assert narrow_id in by_client and active.mission_id not in by_client
    both = listed(bob.get("/console/", params={"state": "pending_approval",
                                                "client": NARROW[0], "subject": "alice"}))
    assert narrow_id in both and for_bob.mission_id not in both
    assert narrow_id not in listed(bob.get("/console/", params={"state": "active",
                                                                "client": NARROW[0]}))
    # The filter form shows what is applied.
    page = bob.get("/console/", params={"state": "suspended", "client": "demo-agent"}).text
    assert '<option value="suspended" selected>' in page
    assert 'name="client" type="text" value="demo-agent"' in page
    nobody = bob.get("/console/", params={"client": "nobody-registered"})
    assert listed(nobody) == []
    assert "No Mission matches these filters." in nobody.text


def test_the_state_filter_is_the_effective_state(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    soon = instant(flow.now() + timedelta(minutes=2))
    short = mission_for(flow, "alice", intent=mission_intent(flow.now(), mission_expiry=soon))
    flow.clock.advance(150)
    # Not swept yet: stored active, effectively expired, and shown as both.
    assert flow.mission(short.mission_id).state.value == "active"
    expired = bob.get("/console/", params={"state": "expired"})
    assert short.mission_id in listed(expired)
    assert short.mission_id not in listed(bob.get("/console/", params={"state": "active"}))
    page = bob.get(f"/console/missions/{short.mission_id}").text
    assert state_of(page) == "expired"
    assert "(stored: active)" in page
    assert buttons(page) == []


@pytest.mark.parametrize(("query", "words"), [
    ({"state": "paused"}, "unknown Mission state"),
    ({"state": "ACTIVE"}, "unknown Mission state"),
    ({"page": "0"}, "page must be a whole number"),
    ({"page": "two"}, "page must be a whole number"),
    ({"subject": "x" * 256}, "at most 255 characters"),
])
def test_bad_filters_are_a_400_page(bob: TestClient, query: dict[str, str],
                                    words: str) -> None:
    response = bob.get("/console/", params=query)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert words in unescape(response.text)


def test_goals_are_inert_text(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    goal = 'Pay <script>alert("x")</script> and <b>bold</b> \u202eevil'
    grant = mission_for(flow, "alice", intent=mission_intent(flow.now(), goal=goal))
    for url in ("/console/", f"/console/missions/{grant.mission_id}"):
        html = bob.get(url).text
        assert "<script>" not in html and "<b>bold</b>" not in html
        assert "&lt;script&gt;alert(" in html
        assert "[U+202E]" in html  # the direction override is shown, not obeyed


# -- the Mission page -------------------------------------------------------------------------


def test_the_mission_page_shows_intent_authority_anchors_and_counters(
        flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    record = flow.mission(grant.mission_id)
    page = bob.get(f"/console/missions/{grant.mission_id}")
    assert page.status_code == 200
    text = unescape(page.text)
    intent = record.mission_intent
    assert intent["goal"] in text
    for item in (*intent["resources"], *intent["constraints"]):
        assert item in text
    # The granted authority in the consent page's plain words.
    for words in ("send a wire transfer to a vendor", "cannot be undone",
                  "at most 500.00 USD per action", "vendors limited to acme",
                  "at most 50 token issuances"):
        assert words in text
    for anchor in (record.proposal_hash, record.consent_rendering_hash, record.authority_hash,
                   record.policy_version):
        assert anchor and anchor in text
    assert re.search(r"<dt>Version</dt><dd>2</dd>", page.text)
    assert re.search(r"<dt>Derivations used</dt><dd>1 of 50</dd>", page.text)
    assert re.search(r"<dt>Tokens issued</dt><dd>1</dd>", page.text)
    assert "Alice Example" in text and "Bob Manager" in text


def test_a_pending_mission_shows_nothing_granted(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    pushed = flow.push_ok()
    mission_id = flow.mission_of(pushed.request_uri).mission_id
    page = bob.get(f"/console/missions/{mission_id}")
    assert page.status_code == 200
    assert state_of(page.text) == "pending_approval"
    assert "Nothing has been granted" in page.text
    assert buttons(page.text) == []


def test_the_timeline_tells_the_story_in_order(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    pushed, code = flow.approved_code(login_hint="alice")
    first = flow.redeem(code, pushed.pkce.verifier)
    assert first.status_code == 200
    mission_id = first.json()["mission_id"]
    replay = flow.redeem(code, pushed.pkce.verifier)  # refused, and audited on the Mission
    assert replay.status_code == 400
    changed_ok(bob, mission_id, "suspend", reason="Audit <review> of Q3")
    page = bob.get(f"/console/missions/{mission_id}").text
    titles = re.findall(r'<strong class="mb-entry-title">([^<]+)</strong>', page)
    assert titles == ["Mission requested", "Approved", "Token issued",
                      "Token request refused", "Suspended"]
    entries = re.findall(r'<li class="mb-entry mb-entry-([a-z]+)"', page)
    assert entries == ["lifecycle", "lifecycle", "token", "refusal", "lifecycle"]
    text = plain(page)
    assert "by client demo-agent" in text
    assert "by bob (approver)" in text
    assert "by bob via the console (admin, approver)" in text
    assert "Reason: Audit <review> of Q3" in text
    assert "&lt;review&gt;" in page
    assert "active → suspended, version 3" in text
    assert "authorization_code grant, derivation 1" in text
    assert "invalid_grant" in text
    # The audit record names the console and the person.
    with flow.store.read() as session, session.begin():
        last = session.scalars(select(AuditRecord).where(AuditRecord.mission_id == mission_id)
                               .order_by(AuditRecord.mission_seq.desc()).limit(1)).one()
        assert last.actor == {"roles": ["admin", "approver"], "user": "bob", "via": "console"}
        assert last.data["reason"] == "Audit <review> of Q3"


# -- changing a Mission -----------------------------------------------------------------------


def test_bob_suspends_resumes_and_revokes(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    mission_id = grant.mission_id
    page = bob.get(f"/console/missions/{mission_id}").text
    assert buttons(page) == ["revoke", "suspend", "complete"]
    page = changed_ok(bob, mission_id, "suspend")
    assert state_of(page) == "suspended"
    assert "The Mission is now suspended." in page
    assert buttons(page) == ["revoke", "resume", "complete"]
    page = changed_ok(bob, mission_id, "resume")
    assert state_of(page) == "active"
    page = changed_ok(bob, mission_id, "revoke", reason="done with it")
    assert state_of(page) == "revoked"
    assert buttons(page) == []
    assert "it cannot change any more" in page
    assert flow.mission(mission_id).state.value == "revoked"
    # A refresh after the revocation is refused.
    assert flow.refresh(grant.refresh_token).status_code == 400


def test_a_repeated_form_is_idempotent(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    form = lifecycle_form(bob, grant.mission_id)
    data = {**form.hidden, "operation": "suspend", "reason": "twice", "confirm": "yes"}
    url = f"/console/missions/{grant.mission_id}/lifecycle"
    assert bob.post(url, data=data).headers["location"].endswith("?done=suspend")
    before = snapshot(flow.engine)
    again = bob.post(url, data=data)  # the same form sent twice (a double click)
    assert again.status_code == 303
    assert again.headers["location"].endswith("?done=suspend&repeat=1")
    assert snapshot(flow.engine) == before
    assert "already suspended: nothing changed" in bob.get(again.headers["location"]).text


def test_a_stale_page_changes_nothing(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    stale = lifecycle_form(bob, grant.mission_id)
    changed_ok(bob, grant.mission_id, "suspend")
    refused_unchanged(
        flow, lambda: bob.post(f"/console/missions/{grant.mission_id}/lifecycle",
                               data={**stale.hidden, "operation": "revoke",
                                     "reason": "from an old tab", "confirm": "yes"}),
        409, "The Mission changed or has ended")


def test_an_illegal_operation_is_a_409_page(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    changed_ok(bob, grant.mission_id, "revoke")
    form = form_of(bob.get("/console/").text, "/console/sign-out")  # the session's CSRF token
    response = refused_unchanged(
        flow, lambda: bob.post(f"/console/missions/{grant.mission_id}/lifecycle",
                               data={**form.hidden, "operation": "suspend",
                                     "reason": "too late", "confirm": "yes"}),
        409, "The Mission changed or has ended: the Mission is revoked; suspend refused.")
    assert "Nothing was changed." in response.text
    assert state_of(response.text) == "revoked"
    # Asking to resume an active Mission is a repeat, not an error: nothing to do.
    active = mission_for(flow, "alice")
    response = change(bob, active.mission_id, "resume")
    assert response.headers["location"].endswith("?done=resume&repeat=1")
    pushed = flow.push_ok()  # pending: nothing may be done to it from the console yet
    pending_id = flow.mission_of(pushed.request_uri).mission_id
    refused_unchanged(
        flow, lambda: bob.post(f"/console/missions/{pending_id}/lifecycle",
                               data={**form.hidden, "operation": "suspend",
                                     "reason": "early", "confirm": "yes"}),
        409, "Not possible in the Mission's current state: cannot suspend a Mission that is "
             "pending_approval.")


def test_alice_may_revoke_but_not_suspend(flow: Flow, alice: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    page = alice.get(f"/console/missions/{grant.mission_id}").text
    assert buttons(page) == ["revoke"]  # no suspend, resume or complete
    for operation in ("suspend", "complete"):
        response = refused_unchanged(
            flow, lambda op=operation: change(alice, grant.mission_id, op), 403,
            f"You may not do this: not allowed to {operation} this Mission.")
        assert "Nothing was changed." in response.text
    assert flow.mission(grant.mission_id).state.value == "active"
    page = changed_ok(alice, grant.mission_id, "revoke", reason="I changed my mind")
    assert state_of(page) == "revoked"
    with flow.store.read() as session, session.begin():
        last = session.scalars(select(AuditRecord)
                               .where(AuditRecord.mission_id == grant.mission_id)
                               .order_by(AuditRecord.mission_seq.desc()).limit(1)).one()
    assert last.actor == {"roles": ["subject"], "user": "alice", "via": "console"}
    assert last.data["state"] == "revoked"


def test_alice_cannot_resume_a_suspended_mission(flow: Flow, bob: TestClient,  # noqa: F811
                                                 alice: TestClient) -> None:
    grant = mission_for(flow, "alice")
    changed_ok(bob, grant.mission_id, "suspend")
    assert buttons(alice.get(f"/console/missions/{grant.mission_id}").text) == ["revoke"]
    refused_unchanged(flow, lambda: change(alice, grant.mission_id, "resume"), 403,
                      "not allowed to resume this Mission")


def refused_audited(flow: Flow, send: Any, status: int, words: str, *, user: str,  # noqa: F811
                    mission_id: str | None, error: str, cause: str) -> dict[str, Any]:
    """A console refusal changes nothing and leaves exactly one ``lifecycle.refused``
    record naming the person and the console (decision G8, as at the endpoint)."""
    seq = last_audit_seq(flow.engine)
    refused_unchanged(flow, send, status, words)
    [record] = refusals(flow.engine, seq)
    assert record["event"] == "lifecycle.refused"
    assert record["actor"] == {"user": user, "via": "console"}
    assert record["mission_id"] == mission_id
    assert (record["data"]["error"], record["data"]["cause"]) == (error, cause), record
    return record


def test_every_console_refusal_is_audited(flow: Flow, bob: TestClient,  # noqa: F811
                                          alice: TestClient) -> None:
    grant = mission_for(flow, "alice")
    mission_id = grant.mission_id
    # Forbidden: alice may not suspend her own Mission.
    record = refused_audited(flow, lambda: change(alice, mission_id, "suspend"), 403,
                             "You may not do this", user="alice", mission_id=mission_id,
                             error="access_denied", cause="access_denied")
    assert record["data"]["operation"] == "suspend"
    # A stale page.
    stale = lifecycle_form(bob, mission_id)
    changed_ok(bob, mission_id, "suspend")
    url = f"/console/missions/{mission_id}/lifecycle"
    refused_audited(flow, lambda: bob.post(url, data={
        **stale.hidden, "operation": "revoke", "reason": "old tab", "confirm": "yes"}),
        409, "The Mission changed or has ended", user="bob", mission_id=mission_id,
        error="mission_concurrent_modification", cause="mission_concurrent_modification")
    # An illegal transition: a pending Mission cannot be suspended.
    pending_id = flow.mission_of(flow.push_ok().request_uri).mission_id
    csrf = form_of(bob.get("/console/").text, "/console/sign-out").hidden
    refused_audited(flow, lambda: bob.post(
        f"/console/missions/{pending_id}/lifecycle",
        data={**csrf, "operation": "suspend", "reason": "early", "confirm": "yes"}),
        409, "Not possible in the Mission's current state", user="bob",
        mission_id=pending_id, error="invalid_state", cause="invalid_state")
    # A form error, and a Mission hidden from alice (the real cause kept, the 404 shown).
    refused_audited(flow, lambda: change(bob, mission_id, "resume", confirm=None), 400,
                    "tick “I understand”", user="bob", mission_id=mission_id,
                    error="invalid_request", cause="invalid_request")
    other = mission_for(flow, "bob")
    refused_audited(flow, lambda: alice.post(
        f"/console/missions/{other.mission_id}/lifecycle",
        data={**form_of(alice.get("/console/").text, "/console/sign-out").hidden,
              "operation": "revoke", "reason": "not mine", "confirm": "yes"}),
        404, "Mission not found", user="alice", mission_id=other.mission_id,
        error="not_found", cause="no_role")
    # The timeline names the refusal.
    page = plain(bob.get(f"/console/missions/{mission_id}").text)
    assert "Lifecycle change refused" in page


@pytest.mark.parametrize(("overrides", "words"), [
    ({"csrf_token": None}, "the form has expired or was not sent from this site"),
    ({"csrf_token": "A" * 43}, "the form has expired or was not sent from this site"),
])
def test_a_change_without_the_csrf_token_is_refused(flow: Flow, bob: TestClient,  # noqa: F811
                                                    overrides: dict[str, Any],
                                                    words: str) -> None:
    grant = mission_for(flow, "alice")
    refused_unchanged(flow, lambda: change(bob, grant.mission_id, "suspend", **overrides),
                      400, words)


def test_a_change_from_another_session_is_refused(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    other = signed_in(flow, "bob")
    foreign = lifecycle_form(other, grant.mission_id).hidden["csrf_token"]
    refused_unchanged(flow, lambda: change(bob, grant.mission_id, "revoke",
                                           csrf_token=foreign),
                      400, "the form has expired or was not sent from this site")


@pytest.mark.parametrize(("overrides", "words"), [
    ({"reason": None}, "give a reason"),
    ({"reason": "   \r\n  "}, "give a reason"),
    ({"reason": "x" * 1025}, "at most 1024 characters"),
    ({"reason": "a\x00b"}, "text, new lines and tabs only"),
    ({"confirm": None}, "tick “I understand” to confirm the change"),
    ({"confirm": "no"}, "tick “I understand” to confirm the change"),
    ({"operation": "approve"}, "operation must be one of"),
    ({"operation": None}, "operation must be one of"),
    ({"expected_version": "v2"}, "expected_version must be a whole number"),
    # The endpoint's rules (decision G6): no C1 controls, at most 18 digits.
    ({"reason": "ok\x9bthere"}, "text, new lines and tabs only"),
    ({"reason": "del\x7f"}, "text, new lines and tabs only"),
    ({"expected_version": "1" * 19}, "expected_version must be a whole number"),
    ({"expected_version": " 1"}, "expected_version must be a whole number"),
])
def test_reason_and_confirmation_are_required(flow: Flow, bob: TestClient,  # noqa: F811
                                              overrides: dict[str, Any], words: str) -> None:
    grant = mission_for(flow, "alice")
    response = refused_unchanged(
        flow, lambda: change(bob, grant.mission_id, "suspend", **overrides), 400, words)
    assert "Nothing was changed." in response.text
    # The page is the Mission page again, with the form, ready to be corrected.
    assert buttons(response.text) == ["revoke", "suspend", "complete"]


def test_reasons_and_versions_follow_the_endpoints_rules(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    """Decision G6 in the console: CRLF becomes LF, a lone CR and a tab are kept, and an
    expected_version of up to 18 digits is a version (here a stale one: 409)."""
    grant = mission_for(flow, "alice")
    changed_ok(bob, grant.mission_id, "suspend", reason="first\r\nsecond\tthird\rend")
    assert flow.mission(grant.mission_id).lifecycle_history[-1]["reason"] == (
        "first\nsecond\tthird\rend")
    refused_unchanged(flow, lambda: change(bob, grant.mission_id, "resume",
                                           expected_version="1" * 18),
                      409, "The Mission changed or has ended")


def test_the_form_asks_for_a_reason_and_a_confirmation(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    page = bob.get(f"/console/missions/{grant.mission_id}").text
    assert re.search(r'<textarea id="reason" name="reason"[^>]* required', page)
    assert re.search(r'<label for="reason">', page)
    assert re.search(r'<input type="checkbox" id="confirm" name="confirm" value="yes" required>',
                     page)
    assert '<label for="confirm">' in page
    form = form_of(page, "/lifecycle")
    assert form.method == "POST" and set(form.hidden) == {"csrf_token", "expected_version"}


# -- what every console page carries ----------------------------------------------------------


def test_every_console_page_carries_the_hardening_headers(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    for response in (
        bob.get("/console/"),
        bob.get(f"/console/missions/{grant.mission_id}"),
        bob.get(f"/console/missions/{UNKNOWN_ID}"),
        bob.get("/console/", params={"state": "nonsense"}),
        change(bob, grant.mission_id, "suspend", reason=None),
    ):
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        assert "<script" not in response.text
        # Nothing from elsewhere: only this origin's stylesheets.
        assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', response.text) == [
            "/static/missionbound.css", "/static/console.css"]
    assert flow.client.get("/static/console.css").status_code == 200


def test_the_list_is_an_accessible_table(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    mission_for(flow, "alice")
    page = bob.get("/console/").text
    assert re.search(r"<caption>Missions, newest first: 1 to \d+ of \d+</caption>", page)
    assert page.count('<th scope="col">') == 6
    assert '<th scope="row">' in page
    for field in ("filter-state", "filter-subject", "filter-client"):
        assert f'<label for="{field}">' in page and f'id="{field}"' in page
    assert '<nav class="mb-console-nav" aria-label="Console">' in page
    assert "<main" in page and "<header" in page


def test_the_timeline_pages_by_position(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    grant = mission_for(flow, "alice")
    page = bob.get(f"/console/missions/{grant.mission_id}", params={"after": "2"})
    assert page.status_code == 200
    titles = re.findall(r'<strong class="mb-entry-title">([^<]+)</strong>', page.text)
    assert titles == ["Token issued"]
    assert f'href="/console/missions/{grant.mission_id}">Earlier records</a>' in page.text
    beyond = bob.get(f"/console/missions/{grant.mission_id}", params={"after": "99"})
    assert "No audit records after this point." in beyond.text
    bad = bob.get(f"/console/missions/{grant.mission_id}", params={"after": "-1"})
    assert bad.status_code == 400
    assert "after must be a whole number" in plain(bad.text)


def test_the_console_address_without_a_slash(bob: TestClient) -> None:
    response = bob.get("/console")
    assert response.status_code in (307, 308)
    assert response.headers["location"].endswith("/console/")


def test_an_unreadable_mission_is_shown_as_such(flow: Flow, bob: TestClient,  # noqa: F811
                                               alice: TestClient) -> None:
    grant = mission_for(flow, "alice")
    with flow.store.begin() as session:  # a row rewritten behind the AS's back
        session.execute(update(Mission).where(Mission.mission_id == grant.mission_id)
                        .values(state="paused"))
    try:
        listing = bob.get("/console/")
        assert listing.status_code == 200
        row = re.search(rf'{grant.mission_id}</code></a></th>\s*<td colspan="5">(.*?)</td>',
                        listing.text, re.S)
        assert row and "unreadable" in row.group(1)
        page = bob.get(f"/console/missions/{grant.mission_id}")
        assert page.status_code == 409
        assert "unknown Mission state" in plain(page.text)
        # To anyone but an administrator it is not there.
        hidden = alice.get(f"/console/missions/{grant.mission_id}")
        assert hidden.status_code == 404
        assert hidden.text == alice.get(f"/console/missions/{UNKNOWN_ID}").text
    finally:
        with flow.store.begin() as session:
            session.execute(update(Mission).where(Mission.mission_id == grant.mission_id)
                            .values(state="active"))


@pytest.mark.parametrize("tamper", [
    lambda d: {k: v for k, v in d.items() if k != "rendered_at"},
    # Deeper than the load-time check looks: the template's own strictness answers.
    lambda d: {**d, "mission_expiry": {"granted": d["mission_expiry"]["granted"]}},
    lambda d: "not an object",
])
def test_an_unreadable_consent_disclosure_is_shown_as_such(
        flow: Flow, bob: TestClient, alice: TestClient, tamper: Any) -> None:  # noqa: F811
    """Decision V7: a stored disclosure the page cannot render is a 409 page for an
    administrator and the 404 for anyone else, never a 500."""
    grant = mission_for(flow, "alice")
    with flow.store.begin() as session:
        original = session.scalar(select(Mission.record)
                                  .where(Mission.mission_id == grant.mission_id))
        tampered = {**original,
                    "consent_disclosure": tamper(original["consent_disclosure"])}
        session.execute(update(Mission).where(Mission.mission_id == grant.mission_id)
                        .values(record=tampered))
    try:
        page = bob.get(f"/console/missions/{grant.mission_id}")
        assert page.status_code == 409, page.text
        assert "This Mission cannot be shown" in plain(page.text)
        hidden = alice.get(f"/console/missions/{grant.mission_id}")
        assert hidden.status_code == 404
        assert hidden.text == alice.get(f"/console/missions/{UNKNOWN_ID}").text
        # A refused change (the audit tamper check refuses events on a rewritten record)
        # would show the page again: the same unreadable page, never a 500.
        response = change_without_page(bob, grant.mission_id, "suspend")
        assert response.status_code == 409, response.text
        assert "This Mission cannot be shown" in plain(response.text)
    finally:
        with flow.store.begin() as session:
            session.execute(update(Mission).where(Mission.mission_id == grant.mission_id)
                            .values(record=original))
    assert bob.get(f"/console/missions/{grant.mission_id}").status_code == 200


def change_without_page(browser: TestClient, mission_id: str, operation: str) -> httpx.Response:
    csrf = form_of(browser.get("/console/").text, "/console/sign-out").hidden
    return browser.post(f"/console/missions/{mission_id}/lifecycle",
                        data={**csrf, "operation": operation, "reason": "r", "confirm": "yes"})


# -- delegation on the timeline (docs/delegation.md) ------------------------------------------


def test_the_timeline_shows_whom_a_delegate_acted_for(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    from tests.issuer.delegation_support import exchange
    from tests.issuer.flow import AGENT
    from tests.protocol.proofs import generate_key

    grant = mission_for(flow, "alice")
    # The demo catalog lets demo-subagent receive the reads, one hop deep.
    delegated = exchange(flow, grant.access_token, key=generate_key())
    assert delegated.status_code == 200, delegated.text
    # demo-agent may not receive its own delegate's token: refused, and on the timeline.
    back = exchange(flow, delegated.json()["access_token"], key=generate_key(), auth=AGENT)
    assert back.status_code == 400 and back.json()["error"] == "invalid_target", back.text

    page = bob.get(f"/console/missions/{grant.mission_id}")
    assert page.status_code == 200, page.text
    titles = re.findall(r'<strong class="mb-entry-title">([^<]+)</strong>', page.text)
    assert titles == ["Mission requested", "Approved", "Token issued",
                      "Token issued to a delegate", "Token request refused"]
    text = plain(page.text)
    assert "by client demo-subagent, acting for client demo-agent" in text
    assert "token exchange grant, derivation 2; delegation depth 1" in text
    # The agent's own token and the refusal name no chain.
    assert "by client demo-agent, acting for" not in text
    assert "invalid_target" in text
