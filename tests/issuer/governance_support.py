"""Shared by the Mission governance tests (``/mission/lifecycle``, ``/mission/status``).

:func:`governance` turns the module's ``flow`` (tests/issuer/flow.py) into a deployment with
every kind of caller PROFILE.md section 7 names:

- people: ``alice`` (the Subject), ``carol`` (may approve for alice, not an admin), ``dave``
  (an admin), ``erin`` (nobody to these Missions), besides the demo's ``bob`` (approver and
  admin); the added people sign in with alice's password;
- clients: ``demo-agent`` (the Missions' client) and ``narrow-agent`` with a ``private_key_jwt``
  key, ``key-rs`` (a Resource Server for the ERP API with ``private_key_jwt``), and the demo's
  ``demo-rs`` (both APIs, ``client_secret_basic``) and ``demo-subagent``.

Missions are made directly in the store (:meth:`Governance.mission`), approved with real
anchors; DPoP-bound tokens come from the real flow (``flow.grant``).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, Key
from sqlalchemy import select

from missionbound.issuer.clients import ClientDirectory
from missionbound.issuer.governance_callers import ASSERTION_TYPE
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord, Principal, format_instant, new_mission_id
from missionbound.protocol.dpop import access_token_hash
from missionbound.store import missions
from missionbound.store.lifecycle import transition
from missionbound.store.models import LifecycleRequest
from missionbound.store.transactions import Store
from missionbound.web.sessions import SESSION_COOKIE, read_browser_session
from tests.e2e_support import parse_form
from tests.issuer.flow import ERP, ISSUER, MCP, Flow, snapshot
from tests.store.factories import make_approval

LIFECYCLE = "/mission/lifecycle"
STATUS = "/mission/status"
STATUS_TYPE = "mission-status-response+jwt"
STATUS_MEDIA_TYPE = "application/mission-status-response+jwt"
AGENT = "demo-agent"
NARROW = "narrow-agent"
KEY_RS = "key-rs"
DEMO_RS = ("demo-rs", "demo-rs-secret")
SUBAGENT = ("demo-subagent", "demo-subagent-secret")
EXTRA_USERS = {
    "carol": {"roles": frozenset(), "may_approve_for": frozenset({"alice"})},
    "dave": {"roles": frozenset({"admin"}), "may_approve_for": frozenset()},
    "erin": {"roles": frozenset(), "may_approve_for": frozenset()},
}
ALICE_PASSWORD = "alice"


def nonce() -> str:
    return "n-" + secrets.token_urlsafe(12)


@dataclass
class Governance:
    flow: Flow
    key: ECKey  # the private_key_jwt key of demo-agent, narrow-agent and key-rs
    _browsers: dict[str, TestClient] = field(default_factory=dict)

    # -- callers ---------------------------------------------------------------------------

    def assertion(self, client_id: str, **claims: Any) -> dict[str, str]:
        """The form fields of a fresh ``private_key_jwt`` assertion (RFC 7523)."""
        now = int(time.time())
        body = {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now,
                "exp": now + 60, "jti": secrets.token_urlsafe(16), **claims}
        value = jwt.encode({"alg": "ES256", "kid": self.key.thumbprint()}, body, self.key)
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": value}

    def browser(self, username: str) -> TestClient:
        """A browser signed in as ``username`` (kept: signing in costs a password hash)."""
        browser = self._browsers.get(username)
        if browser is None:
            browser = self.flow.browser()
            page = browser.get("/login")
            _, _, hidden = parse_form(page.text)
            password = username if username in ("alice", "bob") else ALICE_PASSWORD
            done = browser.post("/login", data={**hidden, "username": username,
                                                "password": password})
            assert done.status_code == 303, done.text
            self._browsers[username] = browser
        return browser

    def csrf(self, browser: TestClient) -> str:
        session = read_browser_session(
            browser.cookies.get(SESSION_COOKIE), secret=self.flow.issuer.secret("browser-session"),
            now=self.flow.now())
        assert session.signed_in
        return session.csrf_token

    def token_headers(self, access_token: str, key: Key, *, path: str = LIFECYCLE,
                      **claims: Any) -> dict[str, str]:
        """``Authorization: DPoP`` and a proof for ``path`` carrying the token's ``ath``."""
        proof_claims = {"ath": access_token_hash(access_token), **claims}
        proof_claims = {name: value for name, value in proof_claims.items() if value is not None}
        return {"Authorization": f"DPoP {access_token}",
                "DPoP": self.flow.dpop(key, path=path, **proof_claims)}

    # -- requests --------------------------------------------------------------------------

    def post(self, path: str, form: dict[str, Any], *, client: str | None = None,
             user: str | None = None, basic: tuple[str, str] | None = None,
             headers: dict[str, str] | None = None, csrf: bool = True) -> httpx.Response:
        """POST ``form`` to ``path`` as ``client`` (private_key_jwt), ``user`` (browser
        session and, unless ``csrf`` is False, its CSRF token), ``basic`` (HTTP Basic) or
        whatever ``headers`` carry."""
        data = {name: value for name, value in form.items() if value is not None}
        if client is not None:
            data.update(self.assertion(client))
        agent = self.flow.client
        if user is not None:
            agent = self.browser(user)
            if csrf:
                data["csrf_token"] = self.csrf(agent)
        return agent.post(path, data=data, auth=basic, headers=headers or {})

    def lifecycle(self, mission_id: str, operation: str, *, reason: str | None = "test",
                  nonce_value: str | None = None, expected_version: int | None = None,
                  **auth: Any) -> httpx.Response:
        form = {"mission": mission_id, "operation": operation, "reason": reason,
                "nonce": nonce_value or nonce(),
                "expected_version": None if expected_version is None else str(expected_version)}
        return self.post(LIFECYCLE, form, **auth)

    def status(self, mission_id: str, audience: str, *, nonce_value: str | None = None,
               **auth: Any) -> httpx.Response:
        form = {"mission": mission_id, "audience": audience, "nonce": nonce_value or nonce()}
        return self.post(STATUS, form, **auth)

    def verified(self, response: httpx.Response) -> tuple[dict[str, Any], dict[str, Any]]:
        """A 200 signed status: its header and claims, the signature checked with /jwks."""
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == STATUS_MEDIA_TYPE
        assert response.headers["cache-control"] == "no-store"
        token = jwt.decode(response.text, self.flow.jwks(), algorithms=["ES256"])
        return dict(token.header), dict(token.claims)

    # -- Missions --------------------------------------------------------------------------

    def mission(self, *, state: State = State.ACTIVE, subject: str = "alice",
                approver: str = "carol", client_id: str = AGENT,
                lifetime: timedelta = timedelta(days=1),
                resources: tuple[str, ...] = (ERP, MCP)) -> str:
        """A Mission of ``client_id`` for ``subject``, approved by ``approver`` and brought
        to ``state`` through the store's own lifecycle."""
        now = self.flow.now().replace(microsecond=0)
        entries = {ERP: ["invoices.read"], MCP: ["list_invoices"]}
        record = MissionRecord(
            mission_id=new_mission_id(), origin=ISSUER, state=State.PENDING_APPROVAL,
            version=1,
            mission_intent={"goal": "Reconcile the Q3 invoices.", "resources": list(resources),
                            "mission_expiry": format_instant(now + lifetime)},
            authorization_details_requested=[],
            authority_set=[{"type": "mission_resource_access", "resource": uri,
                            "actions": entries[uri]} for uri in resources],
            narrowing_decisions=[], subject=Principal(ISSUER, subject), client_id=client_id,
            policy_version="demo-catalog:1", created_at=now, mission_expiry=now + lifetime)
        store = self.flow.store
        with store.begin() as session:
            missions.create_pending(session, record, {"client_id": client_id}, now)
            if state is State.PENDING_APPROVAL:
                return record.mission_id
            if state is State.REJECTED:
                transition(session, record.mission_id, Event.REJECT, roles={Role.APPROVER},
                           actor={"user": approver}, reason=None, now=now)
                return record.mission_id
            approval = make_approval(record, Principal(ISSUER, approver))
            missions.approve(session, record.mission_id, **approval.kwargs(), now=now)
            steps = {State.SUSPENDED: [Event.SUSPEND], State.REVOKED: [Event.REVOKE],
                     State.COMPLETED: [Event.COMPLETE], State.ACTIVE: []}[state]
            for event in steps:
                transition(session, record.mission_id, event, roles={Role.ADMIN},
                           actor={"user": "setup"}, reason=None, now=now)
        return record.mission_id

    def record(self, mission_id: str) -> MissionRecord:
        return self.flow.mission(mission_id)

    def snapshot(self) -> dict[str, Any]:
        """tests/issuer/flow.py ``snapshot`` plus the remembered lifecycle nonces."""
        taken = snapshot(self.flow.engine)
        with Store(self.flow.engine).read() as session, session.begin():
            taken["lifecycle_requests"] = sorted(
                tuple(row) for row in session.execute(
                    select(LifecycleRequest.caller, LifecycleRequest.mission_id,
                           LifecycleRequest.nonce, LifecycleRequest.request_digest)))
        return taken


def governance(flow: Flow) -> Governance:
    """``flow`` with the callers above (the module's app: its tenant is replaced once)."""
    existing = getattr(flow, "_governance", None)
    if isinstance(existing, Governance):
        return existing
    key = ECKey.generate_key("P-256", private=True)
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint()}]}
    tenant = flow.issuer.tenant
    alice = tenant.users["alice"]
    users = dict(tenant.users)
    for username, members in EXTRA_USERS.items():
        users[username] = dataclasses.replace(alice, username=username,
                                              display_name=username.title(), **members)
    clients = dict(tenant.clients)
    for client_id in (AGENT, NARROW):
        clients[client_id] = dataclasses.replace(
            clients[client_id], metadata={**clients[client_id].metadata, "jwks": jwks})
    clients[KEY_RS] = dataclasses.replace(
        clients[DEMO_RS[0]], client_id=KEY_RS, client_name="ERP RS with a key",
        token_endpoint_auth_methods=("private_key_jwt",), secret_hash=None,
        audiences=frozenset({ERP}), metadata={"jwks": jwks})
    changed = dataclasses.replace(tenant, users=users, clients=clients)
    flow.issuer.tenant = changed
    flow.issuer.clients = ClientDirectory(changed, flow.store)
    flow.app.state.tenant = changed
    built = Governance(flow, key)
    object.__setattr__(flow, "_governance", built)
    return built
