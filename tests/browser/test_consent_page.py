"""The sign-in and consent pages in headless Chromium against a real ``missionbound serve``.

The agent pushes its request with plain HTTP (PAR, ``login_hint=alice``); the browser does
what an Approver does: opens /authorize, is sent to /login, signs in as bob, reads the consent
page and clicks Approve or Reject. Nothing listens at the client's ``redirect_uri``: the
browser context intercepts it and records where the Approver was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Request, Route, expect

from examples.preview_mission import demo_intent
from tests.e2e_support import ServerHandle

CLIENT = ("demo-agent", "demo-agent-secret")
REDIRECT_URI = "http://127.0.0.1:8765/callback"
HTTP_TIMEOUT = 10.0
BROWSER_TIMEOUT_MS = 15_000
CALLBACK_PAGE = "<!doctype html><title>client callback</title><p>back at the client</p>"


@dataclass
class PushedRequest:
    request_uri: str
    state: str
    code_verifier: str
    intent: dict[str, Any]

    def authorize_url(self, issuer: str) -> str:
        query = urlencode({"client_id": CLIENT[0], "request_uri": self.request_uri})
        return f"{issuer}/authorize?{query}"


@dataclass
class ClientCallback:
    """Every request the browser sent to the client's ``redirect_uri``."""

    urls: list[str] = field(default_factory=list)

    def handle(self, route: Route, request: Request) -> None:
        self.urls.append(request.url)
        route.fulfill(status=200, content_type="text/html", body=CALLBACK_PAGE)

    def query(self) -> dict[str, str]:
        [url] = self.urls
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT_URI
        return {name: values[0] for name, values in parse_qs(parts.query).items()}


def push_request(server: ServerHandle) -> PushedRequest:
    """The agent's PAR (RFC 9126): the demo Mission Intent, for alice."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
        .rstrip(b"=").decode("ascii")
    )
    state = secrets.token_urlsafe(12)
    intent = demo_intent(server.base_url, datetime.now(UTC))
    response = httpx.post(
        f"{server.base_url}/par",
        data={
            "response_type": "code",
            "client_id": CLIENT[0],
            "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": state,
            "mission_intent": intent,
            "login_hint": "alice",
        },
        auth=CLIENT,
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 201, response.text
    return PushedRequest(response.json()["request_uri"], state, verifier, json.loads(intent))


@pytest.fixture
def callback(context: BrowserContext) -> ClientCallback:
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    recorder = ClientCallback()
    context.route("http://127.0.0.1:8765/**", recorder.handle)
    return recorder


def sign_in_as_bob(page: Page, server: ServerHandle, pushed: PushedRequest) -> Any:
    """Open /authorize, get sent to /login, sign in; returns the consent page's response."""
    page.goto(pushed.authorize_url(server.base_url))
    expect(page).to_have_url(re.compile(re.escape(f"{server.base_url}/login?next=")))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Password").fill("bob")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(pushed.authorize_url(server.base_url))
    return navigation.value


def test_bob_reads_the_mission_and_approves_it_for_alice(
    page: Page, served: ServerHandle, callback: ClientCallback
) -> None:
    pushed = push_request(served)
    consent = sign_in_as_bob(page, served, pushed)
    assert consent.status == 200

    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Approve a Mission for Demo reconciliation agent?"
    )
    # The agent's own words, set apart from what the server grants.
    expect(page.locator(".mb-agent-words blockquote")).to_have_text(pushed.intent["goal"])
    # Bob approves with alice's authority, and the page says so.
    expect(page.locator(".mb-behalf")).to_be_visible()
    expect(page.locator(".mb-behalf")).to_contain_text(
        "You are approving on behalf of Alice Example (alice)"
    )
    # The granted actions, in plain words, with how consequential each one is.
    actions = page.locator(".mb-authority .mb-action")
    expect(actions).to_contain_text([
        "list and read invoices",
        "post journal entries",
        "send a wire transfer to a vendor",
        "read one invoice",
        "list invoices, optionally for one vendor",
        "schedule a payment of an invoice on a date",
    ])
    wire = page.locator(".mb-actions li").filter(has_text="send a wire transfer to a vendor")
    expect(wire.locator(".mb-class")).to_have_text("cannot be undone")
    expect(wire.locator(".mb-class")).to_be_visible()
    # Mission-wide bounds: max_derivations, the cap, the vendor allow-list.
    bounds = page.locator(".mb-bounds .mb-limits li")
    expect(bounds).to_contain_text([
        "at most 50 token issuances", "at most 500.00 USD per action", "vendors limited to acme",
    ])
    # The expiry, in words and machine-readable, as granted.
    expiry = datetime.fromisoformat(pushed.intent["mission_expiry"].replace("Z", "+00:00"))
    granted = page.locator("dt", has_text="Ends (granted)").locator(
        "xpath=following-sibling::dd[1]"
    )
    expect(granted.locator("time")).to_have_attribute("datetime", pushed.intent["mission_expiry"])
    expect(granted).to_contain_text(f"{expiry:%A} {expiry.day} {expiry:%B %Y}, 17:00:00 UTC")
    # What the server changed from the request: one row per narrowing decision.
    narrowing = page.locator(".mb-narrowing tbody tr")
    expect(narrowing).to_have_count(3)
    for row in narrowing.all():
        expect(row).to_be_visible()
        expect(row).to_contain_text("the Mission-wide limit the agent asked for")
        expect(row).to_contain_text("mission_context")
    expect(page.locator(".mb-narrowing")).to_contain_text('["acme"]')
    # The stylesheet loaded under the page's CSP (style-src 'self').
    approve = page.get_by_role("button", name="Approve")
    expect(approve).to_have_css("color", "rgb(255, 255, 255)")

    approve.click()
    page.wait_for_url(lambda url: url.startswith(REDIRECT_URI + "?"))
    expect(page.locator("p")).to_have_text("back at the client")
    query = callback.query()
    assert query["state"] == pushed.state
    assert query["iss"] == served.base_url  # RFC 9207
    assert set(query) == {"code", "state", "iss"}

    # The code the browser carried is good for tokens at the token endpoint.
    token = httpx.post(
        f"{served.base_url}/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": pushed.code_verifier,
        },
        auth=CLIENT,
        timeout=HTTP_TIMEOUT,
    )
    assert token.status_code == 200, token.text
    assert token.json()["mission_id"].startswith("msn_")


@pytest.fixture
def framing_site() -> Iterator[ThreadingHTTPServer]:
    """Another origin on 127.0.0.1 serving one page that frames whatever ``?src=`` names,
    plus a control frame; a real loopback site, so the browser's local-network checks
    cannot be what blocks the frame."""

    class FramingPage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            frames = "".join(
                f'<iframe id="{name}" src="{escape(query[name][0])}" width="600" height="300">'
                "</iframe>"
                for name in ("victim", "control")
            )
            body = f"<!doctype html><title>framing site</title>{frames}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), FramingPage)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.shutdown()
        site.server_close()
        thread.join(timeout=5)


def test_the_consent_page_cannot_be_framed_and_reject_denies(
    page: Page,
    context: BrowserContext,
    served: ServerHandle,
    callback: ClientCallback,
    framing_site: ThreadingHTTPServer,
) -> None:
    pushed = push_request(served)
    consent = sign_in_as_bob(page, served, pushed)
    assert consent.status == 200
    headers = consent.headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]

    # Clickjacking: another site frames the consent page the signed-in Approver would see.
    attacker = context.new_page()
    failures: list[tuple[str, str | None]] = []
    attacker.on("requestfailed", lambda request: failures.append((request.url, request.failure)))
    victim_url = pushed.authorize_url(served.base_url)
    control_url = f"{served.base_url}/static/missionbound.css"
    port = framing_site.server_address[1]
    with attacker.expect_console_message(
        lambda message: "frame-ancestors 'none'" in message.text
    ):
        attacker.goto(
            f"http://127.0.0.1:{port}/?" + urlencode({"victim": victim_url, "control": control_url})
        )
    # The control frame (no frame-ancestors) renders, so framing itself works here ...
    expect(attacker.frame_locator("#control").locator("body")).to_contain_text("missionbound")
    # ... and the consent page does not: the browser refused it on its response headers.
    victim = attacker.frame(name="victim")
    assert victim is not None and not victim.url.startswith(served.base_url)
    expect(attacker.frame_locator("#victim").get_by_role("button", name="Approve")).to_have_count(0)
    assert (victim_url, "net::ERR_BLOCKED_BY_RESPONSE") in failures
    attacker.close()

    # Back on the real page, bob rejects: the client learns access_denied, and no code.
    page.get_by_role("button", name="Reject").click()
    page.wait_for_url(lambda url: url.startswith(REDIRECT_URI + "?"))
    query = callback.query()
    assert query["error"] == "access_denied"
    assert query["state"] == pushed.state and query["iss"] == served.base_url
    assert set(query) <= {"error", "error_description", "state", "iss"}
