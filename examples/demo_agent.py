"""The demo agent: get a Mission approved by a person and receive Mission-bound tokens.

    .venv/bin/python examples/demo_agent.py                   # you approve in your browser
    .venv/bin/python examples/demo_agent.py --approve-as bob  # a script approves (plain HTTP)

It plays the OAuth client ``demo-agent`` of the demo tenant against a running
``make run`` server (``--issuer``, default http://127.0.0.1:8000):

1. pushes the demo scenario's Mission Intent for alice (PAR, RFC 9126) with PKCE S256 and
   a DPoP key (RFC 9449);
2. has the Mission approved: it prints the /authorize link and waits for your browser to
   come back to http://127.0.0.1:8765/callback (sign in as bob, password bob: he approves
   for alice), or, with ``--approve-as``, signs in and approves itself through the forms;
3. redeems the code for a DPoP-bound access token (a JWT carrying ``mission``) and a
   refresh token, prints the token's claims, then refreshes once;
4. calls the demo ERP API (``/demo/erp``, a Resource Server built on
   ``missionbound.enforce.rs`` at tier RS-D: the Mission PDP decides every call): lists the
   invoices, posts a journal entry under the Mission's 500 USD cap (201, with the
   ``evaluation_id`` of the PDP's permit, which names its Decision Evidence) and one over it
   (403 ``insufficient_scope``, reason ``constraint_exceeded``: the ERP refuses it itself
   before asking the PDP, so no ``evaluation_id``; a PDP deny would carry one).

Exit 0 when every step went as described; 1 with the server's error otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from joserfc import jws
from joserfc.jwk import ECKey

CLIENT_ID = "demo-agent"
CLIENT_SECRET = "demo-agent-secret"  # DEMO SECRET (demo tenant only)
REDIRECT_URI = "http://127.0.0.1:8765/callback"


def demo_intent(issuer: str) -> str:
    friday = datetime.now(UTC) + timedelta(days=3)
    return json.dumps({
        "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                "invoice, by Friday.",
        "resources": [f"{issuer}/demo/erp", f"{issuer}/demo/mcp"],
        "constraints": ["only Q3 invoices", "pay approved vendors only"],
        "purpose": "https://missionbound.dev/purposes/accounts-payable",
        "mission_expiry": friday.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "context": {"max_derivations": 50,
                    "max_value": {"amount": "500.00", "currency": "USD"},
                    "vendors": ["acme"]},
    })


class DPoPKey:
    """One P-256 key; each request gets a fresh proof (RFC 9449 section 4)."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", private=True)
        self.nonce: str | None = None

    def proof(self, method: str, url: str, access_token: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method,
                                  "htu": url, "iat": int(time.time())}
        if self.nonce:
            claims["nonce"] = self.nonce
        if access_token is not None:  # at a Resource Server: the token's hash (section 4.2)
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            claims["ath"] = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.as_dict(private=False)}
        return jws.serialize_compact(header, json.dumps(claims).encode(), self.key)


def post_with_dpop(http: httpx.Client, dpop: DPoPKey, url: str, data: dict[str, str]
                   ) -> httpx.Response:
    """POST with a DPoP proof, retrying once when the server asks for its nonce."""
    for _ in range(2):
        response = http.post(url, data=data, auth=(CLIENT_ID, CLIENT_SECRET),
                             headers={"DPoP": dpop.proof("POST", url)})
        nonce = response.headers.get("DPoP-Nonce")
        if response.status_code == 400 and nonce and \
                response.json().get("error") == "use_dpop_nonce":
            dpop.nonce = nonce
            continue
        return response
    return response


class _Form(HTMLParser):
    """The page's one form: its action and every named input."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden" and "name" in values:
            self.fields[values["name"]] = values.get("value", "")


def submit_form(http: httpx.Client, page: httpx.Response, extra: dict[str, str]
                ) -> httpx.Response:
    form = _Form()
    form.feed(page.text)
    return http.post(urljoin(str(page.url), form.action), data={**form.fields, **extra})


def approve_by_script(http: httpx.Client, authorize_url: str, user: str) -> str:
    """Sign in as ``user`` (demo password = user name) and approve: the redirect it ends at."""
    response = http.get(authorize_url)
    if response.status_code == 303:  # to /login
        login = http.get(urljoin(authorize_url, response.headers["location"]))
        response = submit_form(http, login, {"username": user, "password": user})
        response = http.get(urljoin(authorize_url, response.headers["location"]))
    if response.status_code != 200:
        raise SystemExit(f"no consent page: {response.status_code} {response.text[:300]}")
    decided = submit_form(http, response, {"decision": "approve"})
    return decided.headers["location"]


def wait_for_callback(timeout: float) -> str:
    """Serve http://127.0.0.1:8765/callback once and return the full callback URL."""
    received: list[str] = []

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(f"http://127.0.0.1:8765{self.path}")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"The agent has its answer; you can close this tab.\n")

        def log_message(self, *args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 8765), Callback)
    server.timeout = 1
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        server.handle_request()
    server.server_close()
    if not received:
        raise SystemExit("no approval arrived in time")
    return received[0]


def call_erp(http: httpx.Client, dpop: DPoPKey, issuer: str, access_token: str) -> bool:
    """The demo ERP API with the Mission's token: what it allows and what it refuses."""
    def send(method: str, path: str, body: dict[str, str] | None = None) -> httpx.Response:
        url = f"{issuer}/demo/erp{path}"
        return http.request(method, url, json=body, headers={
            "Authorization": f"DPoP {access_token}",
            "DPoP": dpop.proof(method, url, access_token)})

    invoices = send("GET", "/invoices")
    print(f"GET /demo/erp/invoices -> {invoices.status_code}: "
          f"{len(invoices.json().get('invoices', []))} invoices")
    under = send("POST", "/journal-entries",
                 {"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"})
    posted = under.json()
    print(f"POST a 120.00 USD journal entry -> {under.status_code} "
          f"(posted by {posted.get('posted_by')}), {who_decided(posted)}")
    over = send("POST", "/journal-entries",
                {"invoice_id": "inv-acme-big", "amount": "900.00", "currency": "USD"})
    refused = over.json()
    print(f"POST a 900.00 USD journal entry -> {over.status_code} {refused.get('error')}, "
          f"{who_decided(refused)}: {refused.get('error_description')}")
    return ((invoices.status_code, under.status_code, over.status_code) == (200, 201, 403)
            and bool(posted.get("evaluation_id")))


def who_decided(answer: dict[str, Any]) -> str:
    """Who decided, in words: the PDP (its evaluation_id names the Decision Evidence) or
    the ERP itself, before asking the PDP (a refusal without an evaluation_id)."""
    evaluation_id = answer.get("evaluation_id")
    if "error" not in answer:
        return f"permitted by the PDP: evaluation_id {evaluation_id}"
    if evaluation_id:
        return f"denied by the PDP ({answer.get('reason')}): evaluation_id {evaluation_id}"
    return f"refused by the ERP before asking the PDP ({answer.get('reason')})"


def claims_of(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", default="http://127.0.0.1:8000")
    parser.add_argument("--approve-as", metavar="USER",
                        help="approve by script as this demo user instead of a browser")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for you")
    args = parser.parse_args(argv)
    issuer = args.issuer.rstrip("/")
    http = httpx.Client(timeout=10, follow_redirects=False)
    dpop = DPoPKey()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    state = secrets.token_urlsafe(12)

    pushed = post_with_dpop(http, dpop, f"{issuer}/par", {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": state,
        "login_hint": "alice", "mission_intent": demo_intent(issuer)})
    if pushed.status_code != 201:
        print(json.dumps(pushed.json(), indent=2))
        return 1
    authorize_url = (f"{issuer}/authorize?client_id={CLIENT_ID}&request_uri="
                     f"{pushed.json()['request_uri']}")
    if args.approve_as:
        callback = approve_by_script(http, authorize_url, args.approve_as)
    else:
        print("Open this link, sign in as bob (password bob) and approve:\n")
        print(f"  {authorize_url}\n")
        callback = wait_for_callback(args.wait)
    answer = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
    if answer.get("iss") != issuer or answer.get("state") != state:
        print(f"refusing the authorization response: iss/state mismatch ({answer})")
        return 1
    if "code" not in answer:
        print(f"not approved: {answer.get('error')}: {answer.get('error_description')}")
        return 1

    tokens = post_with_dpop(http, dpop, f"{issuer}/token", {
        "grant_type": "authorization_code", "code": answer["code"],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
    if tokens.status_code != 200:
        print(json.dumps(tokens.json(), indent=2))
        return 1
    body = tokens.json()
    print(f"Mission {body['mission_id']} is active; token_type {body['token_type']}.")
    print("Access token claims:")
    print(json.dumps(claims_of(body["access_token"]), indent=2))

    refreshed = post_with_dpop(http, dpop, f"{issuer}/token", {
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    if refreshed.status_code != 200:
        print(json.dumps(refreshed.json(), indent=2))
        return 1
    print("Refreshed: a new access token and a rotated refresh token.")
    return 0 if call_erp(http, dpop, issuer, refreshed.json()["access_token"]) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
