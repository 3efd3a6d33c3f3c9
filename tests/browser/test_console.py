"""The console in headless Chromium against a real ``missionbound serve``.

Bob approves a Mission on the real consent page, finds it in the console, and suspends,
resumes and revokes it there through the forms (a reason and the "I understand" box each
time); alice signs in through the console and revokes her own Mission, with no way offered
to suspend it. Screenshots of a failing test land in tests/artifacts/ (tests/browser/conftest.py).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Locator, Page, expect

from tests.browser.test_consent_page import (
    CLIENT,
    HTTP_TIMEOUT,
    REDIRECT_URI,
    ClientCallback,
    PushedRequest,
    callback,  # noqa: F401 (the fixture)
    push_request,
    sign_in_as_bob,
)
from tests.e2e_support import ServerHandle


def approve_and_redeem(page: Page, server: ServerHandle, callback: ClientCallback  # noqa: F811
                       ) -> tuple[PushedRequest, dict[str, Any]]:
    """Bob approves a pushed Mission for alice on the consent page; the agent redeems the
    code. The token response."""
    pushed = push_request(server)
    sign_in_as_bob(page, server, pushed)
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(lambda url: url.startswith(REDIRECT_URI + "?"))
    token = httpx.post(
        f"{server.base_url}/token",
        data={"grant_type": "authorization_code", "code": callback.query()["code"],
              "redirect_uri": REDIRECT_URI, "code_verifier": pushed.code_verifier},
        auth=CLIENT, timeout=HTTP_TIMEOUT)
    assert token.status_code == 200, token.text
    return pushed, token.json()


def timeline_titles(page: Page) -> Locator:
    return page.locator(".mb-timeline .mb-entry-title")


def state_badge(page: Page) -> Locator:
    return page.locator(".mb-state-line .mb-state")


def govern(page: Page, button: str, reason: str) -> None:
    """Fill the lifecycle form as a person does: reason, the confirmation box, the button."""
    page.get_by_label("Reason").fill(reason)
    page.get_by_label("I understand").check()
    with page.expect_navigation():
        page.get_by_role("button", name=button, exact=True).click()


def test_bob_finds_the_mission_and_suspends_resumes_and_revokes_it(
    page: Page, served: ServerHandle, callback: ClientCallback  # noqa: F811
) -> None:
    pushed, token = approve_and_redeem(page, served, callback)
    mission_id = token["mission_id"]

    # The console, already signed in (the same browser session as the consent page).
    page.goto(f"{served.base_url}/console/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Missions")
    expect(page.locator(".mb-demo")).to_contain_text("equals the user name")
    table = page.get_by_role("table")
    expect(table.locator("caption")).to_contain_text("Missions, newest first")
    row = table.locator("tbody tr").filter(has=page.locator(f'a[href$="{mission_id}"]'))
    expect(row).to_have_count(1)
    expect(row.locator(".mb-state")).to_have_text("active")
    expect(row).to_contain_text(pushed.intent["goal"])
    expect(row).to_contain_text("alice")

    # Filtered to active Missions of demo-agent, it is still there; to suspended, not.
    page.get_by_label("State").select_option("active")
    page.get_by_label("Client").fill("demo-agent")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    expect(page.locator(f'a[href$="{mission_id}"]')).to_have_count(1)
    page.get_by_label("State").select_option("suspended")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    expect(page.locator(f'a[href$="{mission_id}"]')).to_have_count(0)

    page.goto(f"{served.base_url}/console/")
    page.locator(f'a[href$="{mission_id}"]').click()
    expect(page).to_have_url(f"{served.base_url}/console/missions/{mission_id}")
    expect(state_badge(page)).to_have_text("active")
    expect(page.locator(".mb-authority")).to_contain_text("send a wire transfer to a vendor")
    expect(timeline_titles(page)).to_have_text(["Mission requested", "Approved", "Token issued"])
    buttons = page.locator(".mb-lifecycle button")
    expect(buttons).to_have_text(["Revoke", "Suspend", "Complete"])

    # Without the confirmation the browser does not send the form: nothing changes.
    page.get_by_label("Reason").fill("no confirmation")
    page.get_by_role("button", name="Suspend", exact=True).click()
    expect(page).to_have_url(f"{served.base_url}/console/missions/{mission_id}")
    page.reload()
    expect(state_badge(page)).to_have_text("active")
    expect(timeline_titles(page)).to_have_count(3)

    govern(page, "Suspend", "Checking the Q3 vendor list")
    expect(page.get_by_role("status")).to_have_text(
        "The Mission is now suspended. The change is in the timeline below.")
    expect(state_badge(page)).to_have_text("suspended")
    expect(buttons).to_have_text(["Revoke", "Resume", "Complete"])
    expect(timeline_titles(page).last).to_have_text("Suspended")
    last = page.locator(".mb-timeline .mb-entry").last
    expect(last).to_contain_text("by bob via the console (admin, approver)")
    expect(last).to_contain_text("Reason: Checking the Q3 vendor list")
    expect(last).to_contain_text("active → suspended, version 3")

    # A suspended Mission gives no new tokens.
    refresh = httpx.post(f"{served.base_url}/token",
                         data={"grant_type": "refresh_token",
                               "refresh_token": token["refresh_token"]},
                         auth=CLIENT, timeout=HTTP_TIMEOUT)
    assert refresh.status_code == 400, refresh.text

    govern(page, "Resume", "Vendor list checked")
    expect(state_badge(page)).to_have_text("active")
    expect(timeline_titles(page).last).to_have_text("Resumed")

    govern(page, "Revoke", "The reconciliation is cancelled")
    expect(state_badge(page)).to_have_text("revoked")
    expect(page.locator(".mb-lifecycle")).to_have_count(0)
    expect(page.locator(".mb-govern")).to_contain_text("it cannot change any more")
    expect(timeline_titles(page)).to_have_text([
        "Mission requested", "Approved", "Token issued", "Suspended",
        "Token request refused", "Resumed", "Revoked"])
    expect(page.locator(".mb-timeline .mb-entry").last).to_contain_text(
        "Reason: The reconciliation is cancelled")

    # Back in the list, the badge says revoked.
    page.get_by_role("link", name="All Missions").click()
    expect(page.locator("tbody tr").filter(has=page.locator(f'a[href$="{mission_id}"]'))
           .locator(".mb-state")).to_have_text("revoked")


def test_alice_signs_in_and_revokes_her_own_mission(
    page: Page, new_context: Any, served: ServerHandle, callback: ClientCallback  # noqa: F811
) -> None:
    _, token = approve_and_redeem(page, served, callback)
    mission_id = token["mission_id"]

    context: BrowserContext = new_context()
    alice = context.new_page()
    alice.goto(f"{served.base_url}/console/")
    expect(alice).to_have_url(re.compile(re.escape(f"{served.base_url}/login?next=")))
    expect(alice.locator(".mb-demo")).to_be_visible()
    alice.get_by_label("User name").fill("alice")
    alice.get_by_label("Password").fill("alice")
    with alice.expect_navigation():
        alice.get_by_role("button", name="Sign in").click()
    expect(alice).to_have_url(f"{served.base_url}/console/")
    expect(alice.locator(".mb-viewer")).to_contain_text("Alice Example")
    expect(alice.locator(".mb-caption").first).to_contain_text(
        "The Missions you are the subject of or approved.")

    alice.locator(f'a[href$="{mission_id}"]').click()
    expect(state_badge(alice)).to_have_text("active")
    # Hers to revoke; not hers to suspend, resume or complete: no such buttons.
    expect(alice.locator(".mb-lifecycle button")).to_have_text(["Revoke"])

    govern(alice, "Revoke", "I no longer want this")
    expect(alice.get_by_role("status")).to_contain_text("The Mission is now revoked.")
    expect(state_badge(alice)).to_have_text("revoked")
    last = alice.locator(".mb-timeline .mb-entry").last
    expect(last).to_contain_text("Revoked")
    expect(last).to_contain_text("by alice via the console (subject)")

    # Signing out ends the session: the console asks to sign in again.
    with alice.expect_navigation():
        alice.get_by_role("button", name="Sign out").click()
    expect(alice).to_have_url(re.compile(re.escape(f"{served.base_url}/login?next=")))
    alice.goto(f"{served.base_url}/console/missions/{mission_id}")
    expect(alice.get_by_role("heading", name="Sign in")).to_be_visible()
