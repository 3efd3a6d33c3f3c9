"""The issuance flow, in process, for the issuer's negative and concurrency tests.

:func:`build_flow` brings a database to the newest migration, makes a signing key and the
app (the demo tenant, plus ``narrow-agent``: demo-agent's twin registered for the ERP API
only), with a server clock a test can move forward. :class:`Flow` then drives the wire flow
of docs/plan: ``push`` (PAR), ``approve`` (``/authorize`` -> ``/login`` -> consent form,
parsed with :func:`tests.e2e_support.parse_form`), ``redeem`` and ``refresh`` (``/token``),
with real DPoP proofs (:mod:`tests.protocol.proofs`).

:func:`snapshot` reads everything issuance can write, so a test can assert that a refused
request issued and changed nothing; :func:`refusals` reads the refusal audit records it
left instead.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import Key, KeySet
from sqlalchemy import Engine, select

from missionbound import audit
from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.issuer.server import MissionIssuer
from missionbound.mission.record import MissionRecord
from missionbound.store import missions
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade
from missionbound.store.models import (
    AuditRecord,
    AuthorizationCode,
    DerivationCounter,
    IssuedToken,
    Mission,
    MissionHistory,
    OutboxEvent,
    PushedAuthorizationRequest,
    RefreshToken,
    RefreshTokenFamily,
)
from missionbound.store.transactions import Store
from missionbound.tenant import Tenant, load_tenant
from missionbound.web.app import create_app
from tests.e2e_support import parse_form
from tests.protocol.proofs import make_proof

ISSUER = "http://testserver"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
ERP = f"{ISSUER}/demo/erp"
MCP = f"{ISSUER}/demo/mcp"
PURPOSE = "https://missionbound.dev/purposes/accounts-payable"
REPORTING = "https://missionbound.dev/purposes/reporting"
AGENT = ("demo-agent", "demo-agent-secret")
SUBAGENT = ("demo-subagent", "demo-subagent-secret")
# demo-agent's twin, registered for the ERP API only (same secret).
NARROW = ("narrow-agent", "demo-agent-secret")
# Every audit event a refused request leaves (``MissionIssuer._audit_refusal``).
REFUSAL_EVENT_SUFFIX = ".refused"
# Engines used by the flow: enough connections for 50 concurrent requests to queue.
POOL = {"pool_size": 5, "max_overflow": 20, "pool_timeout": 60}


class Clock:
    """The issuer's clock: the real time plus an offset that only moves forward (a
    module-shared app must never see time go back)."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str


def new_pkce() -> Pkce:
    """RFC 7636 section 4.1/4.2: a 64-character verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return Pkce(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


def instant(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mission_intent(now: datetime, **overrides: Any) -> dict[str, Any]:
    """The demo scenario's intent (examples/preview_mission.py ``demo_intent``), expiring a
    day after ``now``; ``overrides`` replace members (None removes one)."""
    intent: dict[str, Any] = {
        "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                "invoice, by Friday.",
        "resources": [ERP, MCP],
        "constraints": ["only Q3 invoices", "pay approved vendors only"],
        "purpose": PURPOSE,
        "mission_expiry": instant(now + timedelta(days=1)),
        "context": {"max_derivations": 50,
                    "max_value": {"amount": "500.00", "currency": "USD"},
                    "vendors": ["acme"]},
    }
    intent.update(overrides)
    return {name: value for name, value in intent.items() if value is not None}


@dataclass(frozen=True)
class Pushed:
    request_uri: str
    pkce: Pkce
    state: str


@dataclass(frozen=True)
class Grant:
    """A redeemed code: the token response and what it took to get it."""

    mission_id: str
    body: dict[str, Any]
    pkce: Pkce
    dpop_key: Key | None

    @property
    def access_token(self) -> str:
        return str(self.body["access_token"])

    @property
    def refresh_token(self) -> str:
        return str(self.body["refresh_token"])


@dataclass
class Flow:
    app: Any
    engine: Engine
    store: Store
    clock: Clock
    issuer: MissionIssuer
    client: TestClient
    _browsers: dict[str, TestClient] = field(default_factory=dict)

    # -- HTTP ------------------------------------------------------------------------------

    def browser(self) -> TestClient:
        """A new user agent: its own cookie jar, redirects not followed."""
        return TestClient(self.app, base_url=ISSUER, follow_redirects=False)

    def now(self) -> datetime:
        return self.clock()

    def dpop(self, key: Key, *, path: str = "/token", method: str = "POST",
             **claims: Any) -> str:
        """A fresh DPoP proof of ``key`` for ``path`` at the server's time."""
        defaults: dict[str, Any] = {"htu": ISSUER + path, "htm": method,
                                    "iat": int(self.now().timestamp())}
        return make_proof(key, **{**defaults, **claims})

    # -- PAR ---------------------------------------------------------------------------------

    def par_params(self, *, pkce: Pkce | None = None, intent: Any = None,
                   client_id: str = AGENT[0], **params: Any) -> dict[str, Any]:
        """A valid pushed request for ``client_id``; ``params`` add or replace parameters
        (None removes one). ``intent`` is a dict (JSON-encoded here) or the raw text."""
        pkce = pkce or new_pkce()
        if intent is None:
            intent = mission_intent(self.now())
        base: dict[str, Any] = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
            "state": "st-" + secrets.token_urlsafe(8),
            "mission_intent": (intent if isinstance(intent, str)
                               else json.dumps(intent, ensure_ascii=False)),
            "login_hint": "alice",
        }
        base.update(params)
        return {name: value for name, value in base.items() if value is not None}

    def push(self, *, auth: tuple[str, str] | None = AGENT, pkce: Pkce | None = None,
             intent: Any = None, dpop: str | None = None, content: bytes | None = None,
             headers: Mapping[str, str] | None = None, pairs: Iterable[tuple[str, str]] = (),
             **params: Any) -> httpx.Response:
        """POST /par. ``pairs`` are sent after the other parameters (repeats allowed);
        ``content`` replaces the whole body."""
        all_headers = dict(headers or {})
        if dpop is not None:
            all_headers["DPoP"] = dpop
        if content is None:
            data = self.par_params(pkce=pkce, intent=intent,
                                   client_id=auth[0] if auth else AGENT[0], **params)
            form = list(data.items()) + list(pairs)
            content = str(httpx.QueryParams(form)).encode()
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return self.client.post("/par", content=content, headers=all_headers, auth=auth)

    def push_ok(self, *, pkce: Pkce | None = None, **kwargs: Any) -> Pushed:
        pkce = pkce or new_pkce()
        state = "st-" + secrets.token_urlsafe(8)
        response = self.push(pkce=pkce, state=state, **kwargs)
        assert response.status_code == 201, response.text
        return Pushed(response.json()["request_uri"], pkce, state)

    # -- approval ----------------------------------------------------------------------------

    def signed_in(self, approver: str) -> TestClient:
        """A browser signed in as ``approver`` (kept per approver: signing in costs a
        password hash)."""
        browser = self._browsers.get(approver)
        if browser is None:
            browser = self.browser()
            self.sign_in(browser, approver)
            self._browsers[approver] = browser
        return browser

    def sign_in(self, browser: TestClient, username: str, *, next_path: str = "/") -> None:
        page = browser.get("/login", params={"next": next_path})
        assert page.status_code == 200, page.text
        _, _, hidden = parse_form(page.text)
        done = browser.post("/login", data={**hidden, "username": username,
                                            "password": username})
        assert done.status_code == 303, done.text

    def consent_form(self, request_uri: str, approver: str = "bob", *,
                     client_id: str = AGENT[0], browser: TestClient | None = None
                     ) -> tuple[TestClient, dict[str, str]]:
        """The consent page's hidden inputs, as shown to ``approver``."""
        browser = browser or self.signed_in(approver)
        page = browser.get("/authorize", params={"client_id": client_id,
                                                 "request_uri": request_uri})
        if page.status_code == 303 and page.headers["location"].startswith("/login"):
            self.sign_in(browser, approver)  # the session ended: sign in again
            page = browser.get("/authorize", params={"client_id": client_id,
                                                     "request_uri": request_uri})
        assert page.status_code == 200, page.text
        action, method, hidden = parse_form(page.text)
        assert (action, method) == ("/consent", "POST")
        return browser, hidden

    def decide(self, browser: TestClient, hidden: Mapping[str, str],
               decision: str = "approve") -> httpx.Response:
        return browser.post("/consent", data={**hidden, "decision": decision})

    def approve(self, request_uri: str, approver: str = "bob", *,
                decision: str = "approve", client_id: str = AGENT[0]) -> dict[str, str]:
        """Sign in, read the consent page, decide; the callback's query parameters."""
        browser, hidden = self.consent_form(request_uri, approver, client_id=client_id)
        response = self.decide(browser, hidden, decision)
        assert response.status_code == 303, response.text
        return callback_query(response)

    # -- token endpoint ----------------------------------------------------------------------

    def token(self, data: Mapping[str, Any], *, auth: tuple[str, str] | None = AGENT,
              dpop: str | None = None) -> httpx.Response:
        headers = {"DPoP": dpop} if dpop is not None else {}
        return self.client.post("/token", data=dict(data), auth=auth, headers=headers)

    def redeem(self, code: str, verifier: str | None, *, dpop: str | None = None,
               auth: tuple[str, str] | None = AGENT, redirect_uri: str | None = REDIRECT_URI,
               **extra: Any) -> httpx.Response:
        data = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": redirect_uri, "code_verifier": verifier, **extra}
        return self.token({k: v for k, v in data.items() if v is not None}, auth=auth,
                          dpop=dpop)

    def refresh(self, refresh_token: str, *, dpop: str | None = None,
                auth: tuple[str, str] | None = AGENT, **extra: Any) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
        return self.token(data, auth=auth, dpop=dpop)

    # -- whole flows -------------------------------------------------------------------------

    def approved_code(self, *, approver: str = "bob", **push: Any) -> tuple[Pushed, str]:
        """PAR and approval: the pushed request and the code."""
        pushed = self.push_ok(**push)
        query = self.approve(pushed.request_uri, approver)
        assert query["state"] == pushed.state and query["iss"] == ISSUER, query
        return pushed, query["code"]

    def grant(self, *, dpop_key: Key | None = None, approver: str = "bob",
              **push: Any) -> Grant:
        """PAR, approval and code redemption (DPoP-bound when ``dpop_key`` is given)."""
        pushed, code = self.approved_code(approver=approver, **push)
        proof = self.dpop(dpop_key) if dpop_key is not None else None
        response = self.redeem(code, pushed.pkce.verifier, dpop=proof)
        assert response.status_code == 200, response.text
        body = response.json()
        return Grant(body["mission_id"], body, pushed.pkce, dpop_key)

    # -- the store ---------------------------------------------------------------------------

    def mission(self, mission_id: str) -> MissionRecord:
        with self.store.read() as session, session.begin():
            record = missions.get(session, mission_id)
        assert record is not None
        return record

    def mission_of(self, request_uri: str) -> MissionRecord:
        with self.store.read() as session, session.begin():
            pushed = session.get(PushedAuthorizationRequest, request_uri)
            assert pushed is not None and pushed.mission_id is not None
            record = missions.get(session, pushed.mission_id)
        assert record is not None
        return record

    def derivations(self, mission_id: str) -> int:
        with self.store.read() as session, session.begin():
            return missions.derivation_count(session, mission_id)

    def jwks(self) -> KeySet:
        response = self.client.get("/jwks")
        assert response.status_code == 200
        return KeySet.import_key_set(response.json())

    def decode(self, access_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The access token's header and claims, its signature checked against /jwks."""
        token = jwt.decode(access_token, self.jwks(), algorithms=["ES256"])
        return dict(token.header), dict(token.claims)


def callback_query(response: httpx.Response) -> dict[str, str]:
    """The query of a redirect to the client's callback (each parameter once)."""
    location = response.headers["location"]
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT_URI, location
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a parameter repeats in {location}"
    return dict(pairs)


def tenant_with_narrow_agent(settings: Settings) -> Tenant:
    """The demo tenant plus ``narrow-agent`` (ERP only)."""
    tenant = load_tenant(settings)
    agent = tenant.clients[AGENT[0]]
    narrow = dataclasses.replace(
        agent, client_id=NARROW[0], client_name="Narrow agent (ERP only)",
        mission_resources={ERP: agent.mission_resources[ERP]},
    )
    return dataclasses.replace(tenant, clients={**tenant.clients, NARROW[0]: narrow})


def build_flow(database_url: str, data_dir: Path, **settings: Any) -> Flow:
    """The app on ``database_url`` (migrated here), with a signing key and a movable clock.

    Every setting the flow depends on is passed explicitly, so a developer's
    ``MISSIONBOUND_*`` variables cannot change it."""
    upgrade(database_url)
    values: dict[str, Any] = {
        "issuer": ISSUER, "database_url": database_url, "data_dir": data_dir,
        "config_file": None, "tenant_file": None, "expiry_sweep_seconds": 0,
        "dpop_nonce_required": False, "mission_intent_max_size": 16384,
        "consent_window_seconds": 600, "max_mission_lifetime": timedelta(days=30),
        "max_request_body_size": 1_048_576,
        # The demo ERP's Shared Signals subscription calls the issuer URL over the app's
        # HTTP client; here nothing listens there and resolving "testserver" can block in
        # DNS past any timeout, holding the app's shutdown. Flows that need it pass a
        # loopback client and True (tests/demo/test_erp.py erp_flow).
        "demo_erp_signals": False,
    }
    values.update(settings)
    config = Settings(**values)
    engine = create_engine_for(database_url, **POOL)
    store = Store(engine)
    clock = Clock()
    ensure_signing_key(store, clock())
    app = create_app(config, tenant=tenant_with_narrow_agent(config), engine=engine)
    issuer: MissionIssuer = app.state.issuer
    issuer.clock = clock  # the server's clock: tests move it forward
    client = TestClient(app, base_url=ISSUER, follow_redirects=False)
    return Flow(app=app, engine=engine, store=store, clock=clock, issuer=issuer,
                client=client)


# -- what the store holds ------------------------------------------------------------------


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything issuance writes, as comparable values: Missions with state and version,
    their history, pushed requests and codes (used or not), refresh token families and
    tokens (rotated, revoked), issued tokens (revoked), derivation counters, outbox events
    and audit records other than refusals."""
    with Store(engine).read() as session, session.begin():
        def rows(*columns: Any, where: Any = None) -> list[tuple[Any, ...]]:
            statement = select(*columns)
            if where is not None:
                statement = statement.where(where)
            return sorted(tuple(row) for row in session.execute(statement))

        return {
            "missions": rows(Mission.mission_id, Mission.state, Mission.version),
            "mission_history": rows(MissionHistory.mission_id, MissionHistory.version),
            "pushed_requests": rows(
                PushedAuthorizationRequest.request_uri,
                PushedAuthorizationRequest.consumed_at.is_not(None)),
            "authorization_codes": rows(AuthorizationCode.code_hash,
                                        AuthorizationCode.used_at.is_not(None)),
            "refresh_families": rows(RefreshTokenFamily.family_id,
                                     RefreshTokenFamily.revoked_at.is_not(None)),
            "refresh_tokens": rows(RefreshToken.token_hash, RefreshToken.rotated_at.is_not(None),
                                   RefreshToken.revoked_at.is_not(None)),
            "issued_tokens": rows(IssuedToken.jti, IssuedToken.revoked_at.is_not(None)),
            "derivation_counters": rows(DerivationCounter.mission_id, DerivationCounter.count),
            "outbox_events": rows(OutboxEvent.id),
            "audit_records": rows(
                AuditRecord.seq, AuditRecord.event,
                where=AuditRecord.event.not_like(f"%{REFUSAL_EVENT_SUFFIX}")),
        }


def last_audit_seq(engine: Engine) -> int:
    with Store(engine).read() as session, session.begin():
        return int(session.scalar(select(AuditRecord.seq).order_by(AuditRecord.seq.desc())
                                  .limit(1)) or 0)


def refusals(engine: Engine, after_seq: int) -> list[dict[str, Any]]:
    """The refusal audit records written after ``after_seq``, oldest first."""
    with Store(engine).read() as session, session.begin():
        found = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.seq > after_seq,
                   AuditRecord.event.like(f"%{REFUSAL_EVENT_SUFFIX}"))
            .order_by(AuditRecord.seq)
        )
        return [{"event": r.event, "mission_id": r.mission_id, "actor": r.actor,
                 "data": r.data} for r in found]


def audit_verifies(engine: Engine) -> None:
    report = audit.verify(engine)
    assert report.ok, report.first_break


def refused(flow: Flow, send: Callable[[], httpx.Response], *, status: int, error: str,
            audited: str | None) -> httpx.Response:
    """``send()`` must be refused with ``status`` and ``error``, change nothing in the store,
    and leave exactly one refusal audit record of event ``audited`` (none when None)."""
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    response = send()
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert body.get("error_description") or error == "unsupported_grant_type", body
    assert snapshot(flow.engine) == before, "a refused request changed the store"
    records = refusals(flow.engine, seq)
    if audited is None:
        assert records == [], records
    else:
        assert [(r["event"], r["data"].get("error")) for r in records] == [(audited, error)]
    return response
