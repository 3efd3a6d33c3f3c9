"""The HTML pages: the consent page shows everything the consent disclosure holds (and client
text only as inert, visibly marked text), the sign-in and error pages, and the hardening
headers every page carries.

Disclosures are built by the real core (build_consent_disclosure) from a demo-tenant intent, as
the issuer will build them, so a member the core adds or renames shows up here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jinja2 import UndefinedError
from markupsafe import escape
from starlette.responses import HTMLResponse

from missionbound.config import Settings
from missionbound.mission import (
    ClientCeiling,
    Party,
    Principal,
    build_consent_disclosure,
    derive_authority,
    validate_intent,
)
from missionbound.mission.anchors import authority_hash, proposal_hash
from missionbound.tenant import Tenant, load_tenant
from missionbound.web.pages import (
    mount_static,
    render_consent,
    render_error,
    render_login,
)

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday
FRIDAY = "2026-11-27T17:00:00Z"
HIDDEN = {"csrf_token": "tok-123", "client_id": "demo-agent",
          "request_uri": "urn:ietf:params:oauth:request_uri:abc"}
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


# --- a tiny DOM: enough to assert on forms, inputs, buttons and resource references ---------

class _Element:
    def __init__(self, tag: str, attrs: dict[str, str | None],
                 parent: _Element | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Element] = []

    def iter(self) -> Iterator[_Element]:
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str) -> list[_Element]:
        return [e for e in self.iter() if e.tag == tag]


class _Parser(HTMLParser):
    VOID = frozenset({"meta", "link", "input", "br", "img", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Element("#root", {}, None)
        self.current = self.root
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = _Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        if tag not in self.VOID:
            self.current = element

    def handle_endtag(self, tag: str) -> None:
        node: _Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(response: HTMLResponse) -> _Parser:
    parser = _Parser()
    parser.feed(bytes(response.body).decode("utf-8"))
    parser.close()
    return parser


def body(response: HTMLResponse) -> str:
    return bytes(response.body).decode("utf-8")


def shown(html: str, text: str) -> bool:
    """``text`` appears on the page, escaped as the template escapes it."""
    return str(escape(text)) in html


# --- disclosures built by the real core -------------------------------------------------------

@pytest.fixture
def tenant(settings: Settings) -> Tenant:
    return load_tenant(settings)


def demo_intent(issuer: str, **changes: Any) -> str:
    intent: dict[str, Any] = {
        "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                "invoice, by Friday.",
        "resources": [f"{issuer}/demo/erp", f"{issuer}/demo/mcp"],
        "constraints": ["only Q3 invoices", "pay approved vendors only"],
        "success_criteria": ["every Q3 invoice is reconciled"],
        "purpose": "https://missionbound.dev/purposes/accounts-payable",
        "mission_expiry": FRIDAY,
        "context": {"max_derivations": 50,
                    "max_value": {"amount": "500.00", "currency": "USD"},
                    "vendors": ["acme"]},
    }
    intent.update(changes)
    return json.dumps(intent)


def make_disclosure(settings: Settings, tenant: Tenant, *, approver: str = "bob",
                    client_name: str | None = None, **changes: Any) -> dict[str, Any]:
    agent = tenant.clients["demo-agent"]
    intent = validate_intent(demo_intent(settings.issuer, **changes), catalog=tenant.catalog,
                             now=NOW, max_size=settings.mission_intent_max_size,
                             client_purposes=agent.mission_purposes_registered)
    derivation = derive_authority(intent, catalog=tenant.catalog, now=NOW,
                                  client=ClientCeiling(agent.client_id, agent.mission_resources),
                                  max_lifetime=settings.max_mission_lifetime)

    def party(name: str) -> Party:
        return Party(Principal(settings.issuer, name), tenant.users[name].display_name)

    return build_consent_disclosure(
        disclosure_id="disc-1", intent=intent, authority_set=derivation.authority_set,
        narrowing_decisions=derivation.narrowing_decisions,
        mission_expiry=derivation.mission_expiry, subject=party("alice"),
        approver=party(approver), client_id=agent.client_id,
        client_name=client_name if client_name is not None else agent.client_name,
        catalog=tenant.catalog, proposal_hash=proposal_hash(settings.issuer, intent.value, []),
        authority_hash=authority_hash(settings.issuer, derivation.authority_set),
        rendered_at=NOW)


@pytest.fixture
def disclosure(settings: Settings, tenant: Tenant) -> dict[str, Any]:
    return make_disclosure(settings, tenant)


# --- the consent page ---------------------------------------------------------------------------

def test_consent_page_shows_every_member_of_the_disclosure(disclosure: dict[str, Any]) -> None:
    html = body(render_consent(disclosure=disclosure, hidden=HIDDEN))
    d = disclosure
    expected = [
        d["goal"], *d["stated_constraints"], *d["success_criteria"],
        d["purpose"]["title"], d["purpose"]["uri"],
        d["subject"]["display_name"], d["subject"]["sub"],
        d["approver"]["display_name"], d["approver"]["sub"],
        d["requesting_client"]["client_name"], d["requesting_client"]["client_id"],
        d["disclosure_id"], d["template"]["id"], d["template"]["version"],
        d["source_hashes"]["proposal_hash"], d["source_hashes"]["authority_hash"],
        *(bound["text"] for bound in d["bounds"]),
    ]
    for item in d["authority"]:
        expected += [item["resource"], item["resource_title"]]
        for action in item["actions"]:
            expected += [action["name"], action["description"], action["class_text"]]
        expected += [constraint["text"] for constraint in item["constraints"]]
        if "delegation" in item:
            expected.append(item["delegation"]["text"])
    for decision in d["narrowing_decisions"]:
        expected += [decision["field"], decision["rule"]]
    missing = [text for text in expected if not shown(html, text)]
    assert not missing, f"not on the consent page: {missing}"
    # The demo's Mission-wide bounds, in plain words, including max_derivations.
    for words in ("at most 50 token issuances", "at most 500.00 USD per action",
                  "vendors limited to acme", "send a wire transfer to a vendor",
                  "cannot be undone", "may be handed on to demo-subagent"):
        assert words in html


def test_consent_page_shows_requested_and_granted_expiry(disclosure: dict[str, Any]) -> None:
    html = body(render_consent(disclosure=disclosure, hidden=HIDDEN))
    assert f'<time datetime="{FRIDAY}">Friday 27 November 2026, 17:00:00 UTC</time>' in html
    assert "shortened" not in html


def test_a_shortened_expiry_is_called_out(settings: Settings, tenant: Tenant) -> None:
    far = (NOW + settings.max_mission_lifetime + timedelta(days=10)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    disclosure = make_disclosure(settings, tenant, mission_expiry=far)
    assert disclosure["mission_expiry"]["shortened"]
    html = body(render_consent(disclosure=disclosure, hidden=HIDDEN))
    granted = disclosure["mission_expiry"]["granted"]
    assert f'<time datetime="{far}">' in html and f'<time datetime="{granted}">' in html
    assert "shortened by this server" in html
    # ... and the narrowing table says why, in words and by rule.
    assert "max_mission_lifetime" in html and "the longest Mission this server allows" in html


def test_narrowing_decisions_are_a_readable_table(disclosure: dict[str, Any]) -> None:
    page = parse(render_consent(disclosure=disclosure, hidden=HIDDEN))
    tables = page.root.find_all("table")
    assert len(tables) == 1
    rows = tables[0].find_all("tr")
    assert len(rows) == 1 + len(disclosure["narrowing_decisions"])  # header + one per decision
    html = body(render_consent(disclosure=disclosure, hidden=HIDDEN))
    # Values are shown as JSON text; a null "requested" reads as words.
    assert shown(html, '{"amount": "500.00", "currency": "USD"}')
    assert "not specified" in html
    assert "the Mission-wide limit the agent asked for" in html


def test_approving_for_someone_else_says_so(settings: Settings, tenant: Tenant) -> None:
    on_behalf = make_disclosure(settings, tenant, approver="bob")
    assert on_behalf["on_behalf_of_another"]
    html = body(render_consent(disclosure=on_behalf, hidden=HIDDEN))
    assert "You are approving on behalf of" in html
    assert shown(html, on_behalf["subject"]["display_name"])

    own = make_disclosure(settings, tenant, approver="alice")
    assert not own["on_behalf_of_another"]
    assert "on behalf of" not in body(render_consent(disclosure=own, hidden=HIDDEN))


def test_consent_form_posts_the_hidden_inputs_and_two_decisions(
        disclosure: dict[str, Any]) -> None:
    hidden = {**HIDDEN, "state": 'a"><script>x</script>'}
    page = parse(render_consent(disclosure=disclosure, hidden=hidden))
    forms = page.root.find_all("form")
    assert len(forms) == 1
    form = forms[0]
    assert form.attrs["method"] == "post" and form.attrs["action"] == "/consent"
    inputs = {e.attrs["name"]: e.attrs["value"] for e in form.find_all("input")
              if e.attrs.get("type") == "hidden"}
    assert inputs == hidden  # the value round-trips exactly, quotes and all
    buttons = [(b.attrs.get("type"), b.attrs.get("name"), b.attrs.get("value"))
               for b in form.find_all("button")]
    assert sorted(buttons) == [("submit", "decision", "approve"),
                               ("submit", "decision", "reject")]
    assert not any(e.attrs.get("type") != "hidden" for e in form.find_all("input"))


def test_client_text_is_inert(settings: Settings, tenant: Tenant) -> None:
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    disclosure = make_disclosure(settings, tenant, client_name=f"Agent {attack}",
                                 goal=f"Pay {attack}", constraints=[attack],
                                 success_criteria=[attack])
    response = render_consent(disclosure=disclosure, hidden=HIDDEN)
    html = body(response)
    assert "<script" not in html and "<img" not in html
    assert shown(html, attack)
    page = parse(response)
    assert not page.root.find_all("script") and not page.root.find_all("img")
    # The goal sits in the section labelled as the agent's words, isolated for direction.
    assert "In the agent's own words" in html
    assert f'<bdi dir="auto" class="mb-agent-text">Pay {escape(attack)}</bdi>' in html


def test_bidi_controls_in_client_text_are_shown_not_obeyed(
        settings: Settings, tenant: Tenant) -> None:
    # "pay 5000 USD" written backwards after RIGHT-TO-LEFT OVERRIDE displays as "pay USD 0005"
    # reversed: the page must show the characters, not let them reorder the text.
    goal = "Pay \u202eDSU 0005\u202c to acme"
    disclosure = make_disclosure(settings, tenant, goal=goal,
                                 constraints=["only \u2066isolated\u2069 text",
                                              "smuggled\U000e0041tag"],
                                 client_name="Agent\u200f")
    html = body(render_consent(disclosure=disclosure, hidden=HIDDEN))
    for char in ("\u202e", "\u202c", "\u2066", "\u2069", "\U000e0041", "\u200f"):
        assert char not in html, f"U+{ord(char):04X} reached the page"
    for marker in ("[U+202E]", "[U+202C]", "[U+2066]", "[U+2069]", "[U+E0041]", "[U+200F]"):
        assert marker in html
    # A warning names each character found.
    assert "invisible formatting characters" in html
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in html
    assert "U+E0041 TAG LATIN CAPITAL LETTER A" in html


def test_joiners_and_plain_text_raise_no_warning(settings: Settings, tenant: Tenant) -> None:
    # ZERO WIDTH JOINER builds emoji and is needed by several scripts: not a trick.
    disclosure = make_disclosure(settings, tenant, goal="Reconcile \U0001f468\u200d\U0001f4bc "
                                                        "invoices, שלום, مرحبا")
    html = body(render_consent(disclosure=disclosure, hidden=HIDDEN))
    assert "invisible formatting characters" not in html
    assert "\u200d" in html and "שלום" in html


def test_a_disclosure_missing_a_member_is_an_error_not_a_shorter_page(
        disclosure: dict[str, Any]) -> None:
    incomplete = {k: v for k, v in disclosure.items() if k != "bounds"}
    with pytest.raises(UndefinedError):
        render_consent(disclosure=incomplete, hidden=HIDDEN)


# --- sign-in and error pages -----------------------------------------------------------------

def test_login_page_form() -> None:
    hidden = {"csrf_token": "tok", "next": "/authorize?client_id=demo-agent&request_uri=urn:x"}
    response = render_login(hidden=hidden)
    assert response.status_code == 200
    page = parse(response)
    (form,) = page.root.find_all("form")
    assert form.attrs["method"] == "post" and form.attrs["action"] == "/login"
    inputs = {e.attrs["name"]: e.attrs for e in form.find_all("input")}
    assert inputs["username"]["type"] == "text"
    assert inputs["password"]["type"] == "password"
    assert {n: a["value"] for n, a in inputs.items() if a["type"] == "hidden"} == hidden
    html = body(response)
    assert "equals the user name" not in html and 'role="alert"' not in html


def test_login_page_error_and_demo_note() -> None:
    response = render_login(hidden={"csrf_token": "t"}, error="Wrong <b>password</b>",
                            demo=True, status_code=401)
    assert response.status_code == 401
    html = body(response)
    assert shown(html, "Wrong <b>password</b>") and "<b>" not in html
    assert "password of each demo user equals the user name" in html


def test_error_page() -> None:
    response = render_error(status_code=400, error="invalid_request",
                            description="request_uri <urn:x> is unknown")
    assert response.status_code == 400
    html = body(response)
    assert shown(html, "request_uri <urn:x> is unknown") and "<urn:x>" not in html
    assert "invalid_request" in html and "400" in html


# --- headers and resources ---------------------------------------------------------------------

def all_pages(disclosure: dict[str, Any]) -> list[HTMLResponse]:
    return [render_consent(disclosure=disclosure, hidden=HIDDEN),
            render_login(hidden={"csrf_token": "t"}, error="e", demo=True),
            render_error(status_code=400, error="invalid_request", description="d")]


def test_every_page_carries_the_hardening_headers(disclosure: dict[str, Any]) -> None:
    for response in all_pages(disclosure):
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        csp = {d.split()[0]: d.split()[1:]
               for d in response.headers["content-security-policy"].split("; ")}
        assert csp["default-src"] == ["'none'"]
        assert csp["style-src"] == ["'self'"] and csp["img-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
        # Left out on purpose: Chrome applies form-action to the redirect after POST /consent,
        # which would stop the 303 to the client's redirect_uri (see missionbound.web.pages).
        assert "form-action" not in csp
        assert "script-src" not in csp  # falls back to default-src 'none': no script at all


def test_pages_load_nothing_from_elsewhere(disclosure: dict[str, Any]) -> None:
    for response in all_pages(disclosure):
        page = parse(response)
        assert not page.root.find_all("script") and not page.root.find_all("style")
        references = [e.attrs.get(attr) for e in page.root.iter() for attr in ("src", "href")
                      if e.attrs.get(attr) is not None]
        assert references == ["/static/missionbound.css"]
        # style-src 'self' forbids inline style attributes as well.
        assert not any("style" in e.attrs for e in page.root.iter())


@pytest.mark.anyio
async def test_static_files_are_served() -> None:
    app = FastAPI()
    mount_static(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://as.test") as client:
        response = await client.get("/static/missionbound.css")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/css")
        assert ".mb-agent-words" in response.text
        assert (await client.get("/static/../pages.py")).status_code == 404
