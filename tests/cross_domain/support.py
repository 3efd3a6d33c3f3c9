"""Two trust domains in one process, for the Resource AS tests.

- :class:`Origin`: a real Mission Issuer app (the demo tenant at :data:`ORIGIN`, plus
  ``ras-status``, the status client it registered for the Resource AS, whose audiences are
  the Resource AS's resources) on its own SQLite file. Missions are made in its store,
  approved with real anchors; :meth:`Origin.id_jag` signs ID-JAGs with the origin's own
  signing key, as the contract of /work/plan/issue5.md lays them out (and, for the refusal
  tests, every way they can be wrong).
- :class:`ResourceAS`: the same software in the ``resource_as`` role at :data:`RAS`, on the
  test's database (SQLite or PostgreSQL), trusting :data:`ORIGIN`. Its calls to the origin
  (JWKS, Mission Status) go to the origin app in process through a Starlette TestClient.

:func:`snapshot` reads what a redemption writes (issued tokens, spent ID-JAG ``jti`` values,
audit records other than refusals), so a test can assert that a refusal changed nothing.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from sqlalchemy import Engine, select

from missionbound.config import Settings, TrustedOrigin
from missionbound.issuer.jwt_bearer import REPLAY_NAMESPACE
from missionbound.issuer.keys import SignerKey, ensure_signing_key, signing_key
from missionbound.issuer.server import MissionIssuer
from missionbound.issuer.trusted_origins import (
    TrustedOrigins,
    attach_trusted_origins,
    trusted_origins_of,
)
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord, Principal, format_instant, new_mission_id
from missionbound.store import missions
from missionbound.store.engine import create_engine_for
from missionbound.store.lifecycle import transition
from missionbound.store.migrate import upgrade
from missionbound.store.models import AuditRecord, IssuedToken, RemoteMission, SingleUseId
from missionbound.store.transactions import Store
from missionbound.tenant import Client, SecretHash, Tenant, load_tenant
from missionbound.web.app import create_app
from tests.protocol.proofs import make_proof
from tests.store.factories import make_approval

ORIGIN = "http://origin.test"
RAS = "http://ras.test"
ERP = f"{RAS}/erp"
LEDGER = f"{RAS}/ledger"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ID_JAG_TYPE = "oauth-id-jag+jwt"
STATUS_CLIENT = ("ras-status", "ras-status-secret-7Qw")
# The agent has the same client_id at both ASes (decision F2), with a secret of this AS.
AGENT = ("demo-agent", "agent-at-ras-secret-3Kd")
OTHER_AGENT = ("other-agent", "other-agent-secret-8Lp")
ERP_RS = ("erp-rs", "erp-rs-secret-5Vn")
LEDGER_RS = ("ledger-rs", "ledger-rs-secret-2Jm")
REFUSAL_SUFFIX = ".refused"
POOL = {"pool_size": 5, "max_overflow": 20, "pool_timeout": 60}

ERP_READ: dict[str, Any] = {
    "type": "mission_resource_access", "resource": ERP, "actions": ["invoices.read"]}
ERP_WRITE: dict[str, Any] = {
    "type": "mission_resource_access", "resource": ERP, "actions": ["journal-entries.write"],
    "constraints": {"max_value": {"amount": "500.00", "currency": "USD"}},
}
LEDGER_ENTRY: dict[str, Any] = {
    "type": "mission_resource_access", "resource": LEDGER, "actions": ["entries.read"]}

RAS_TENANT = textwrap.dedent("""\
    [tenant]
    name = "partner"

    [[clients]]
    client_id = "demo-agent"
    client_secret = "agent-at-ras-secret-3Kd"

    [[clients]]
    client_id = "other-agent"
    client_secret = "other-agent-secret-8Lp"
    # RFC 9449 section 5.2: its tokens are always DPoP-bound (a grant without a proof is
    # still invalid_grant, decision F8).
    dpop_bound_access_tokens = true

    [[clients]]
    client_id = "erp-rs"
    client_secret = "erp-rs-secret-5Vn"
    audiences = ["{issuer}/erp"]

    [[clients]]
    client_id = "ledger-rs"
    client_secret = "ledger-rs-secret-2Jm"
    audiences = ["{issuer}/ledger"]

    [catalog]
    version = "partner-catalog:1"

    [[catalog.resources]]
    uri = "{issuer}/erp"
    title = "Partner ERP"

    [[catalog.resources.actions]]
    name = "invoices.read"
    class = "consequential_read"

    [[catalog.resources.actions]]
    name = "journal-entries.write"
    class = "consequential_write"
    constraints = { max_value = "amount" }

    [[catalog.resources]]
    uri = "{issuer}/ledger"
    title = "Partner ledger"

    [[catalog.resources.actions]]
    name = "entries.read"
    class = "consequential_read"
    """)


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- the origin ----------------------------------------------------------------------------


@dataclass
class Origin:
    app: Any
    engine: Engine
    store: Store
    issuer: MissionIssuer
    client: TestClient

    def signer(self) -> SignerKey:
        """The origin's current signing key, read now (the app caches it for seconds)."""
        return signing_key(self.store, now_utc())

    def mission(self, *, entries: list[dict[str, Any]] | None = None,
                lifetime: timedelta = timedelta(days=1), client_id: str = AGENT[0],
                state: State = State.ACTIVE) -> MissionRecord:
        """A Mission of ``client_id`` for alice, approved by bob, in ``state``."""
        created = now_utc().replace(microsecond=0) - timedelta(minutes=5)
        authority = entries if entries is not None else [ERP_READ, ERP_WRITE, LEDGER_ENTRY]
        record = MissionRecord(
            mission_id=new_mission_id(), origin=ORIGIN, state=State.PENDING_APPROVAL,
            version=1,
            mission_intent={"goal": "Reconcile the Q3 invoices.",
                            "resources": sorted({e["resource"] for e in authority}),
                            "mission_expiry": format_instant(created + lifetime)},
            authorization_details_requested=[], authority_set=authority,
            narrowing_decisions=[], subject=Principal(ORIGIN, "alice"), client_id=client_id,
            policy_version="demo-catalog:1", created_at=created,
            mission_expiry=created + lifetime)
        with self.store.begin() as session:
            missions.create_pending(session, record, {"client_id": client_id}, created)
            approval = make_approval(record, Principal(ORIGIN, "bob"))
            approved = missions.approve(session, record.mission_id, **approval.kwargs(),
                                        now=created + timedelta(seconds=1))
        if state is not State.ACTIVE:
            self.transition(record.mission_id, {
                State.REVOKED: Event.REVOKE, State.SUSPENDED: Event.SUSPEND,
                State.COMPLETED: Event.COMPLETE}[state])
        return approved.record

    def transition(self, mission_id: str, event: Event) -> None:
        with self.store.begin() as session:
            transition(session, mission_id, event, roles={Role.ADMIN},
                       actor={"user": "bob"}, reason="cross-domain test", now=now_utc())

    def id_jag_claims(self, mission: MissionRecord, /, *, jkt: str, **overrides: Any
                      ) -> dict[str, Any]:
        """The contract's ID-JAG for ``mission`` at :data:`RAS`, bound to ``jkt``, with the
        Mission's entries for the Resource AS; ``overrides`` replace claims (None drops)."""
        issued = int(time.time())
        claims: dict[str, Any] = {
            "iss": ORIGIN, "sub": "alice", "aud": RAS, "client_id": AGENT[0],
            "iat": issued, "exp": issued + 300, "jti": secrets.token_urlsafe(24),
            "cnf": {"jkt": jkt},
            "authorization_details": [e for e in mission.authority_set
                                      if e["resource"].startswith(RAS)],
            "mission": {"id": mission.mission_id, "origin": ORIGIN,
                        "authority_hash": mission.authority_hash},
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def id_jag(self, mission: MissionRecord, /, *, jkt: str,
               header: dict[str, Any] | None = None, key: Key | None = None,
               **overrides: Any) -> str:
        """An ID-JAG signed with the origin's key (or ``key``)."""
        return sign(self.id_jag_claims(mission, jkt=jkt, **overrides), signer=self.signer(),
                    header=header, key=key)


def sign(claims: dict[str, Any], *, signer: SignerKey, header: dict[str, Any] | None = None,
         key: Key | None = None) -> str:
    protected = {"typ": ID_JAG_TYPE, "alg": signer.alg.value, "kid": signer.kid,
                 **(header or {})}
    protected = {name: value for name, value in protected.items() if value is not None}
    registry = JWSRegistry(algorithms=[protected["alg"]], strict_check_header=False)
    with warnings.catch_warnings():
        # joserfc warns that "EdDSA" is deprecated (RFC 9864); the AS signs with it.
        warnings.simplefilter("ignore", SecurityWarning)
        return jws.serialize_compact(protected, json.dumps(claims), key or signer.key,
                                     registry=registry)


def build_origin(database_url: str, data_dir: Path) -> Origin:
    upgrade(database_url)
    settings = Settings(
        issuer=ORIGIN, database_url=database_url, data_dir=data_dir, config_file=None,
        tenant_file=None, expiry_sweep_seconds=0, signals_delivery_seconds=0,
        dpop_nonce_required=False, registration_enabled=True)
    engine = create_engine_for(database_url, **POOL)
    store = Store(engine)
    ensure_signing_key(store, now_utc())
    app = create_app(settings, tenant=_origin_tenant(settings), engine=engine)
    client = TestClient(app, base_url=ORIGIN, follow_redirects=False)
    return Origin(app, engine, store, app.state.issuer, client)


def _origin_tenant(settings: Settings) -> Tenant:
    """The demo tenant plus the status client the origin registered for the Resource AS."""
    tenant = load_tenant(settings)
    status = Client(
        client_id=STATUS_CLIENT[0], client_name="Partner Resource AS (Mission Status)",
        token_endpoint_auth_methods=("client_secret_basic",), redirect_uris=(),
        mission_resources={}, mission_purposes_registered=None,
        secret_hash=SecretHash.of(STATUS_CLIENT[1], "sha256"),
        audiences=frozenset({ERP, LEDGER}))
    return dataclasses.replace(tenant, clients={**tenant.clients, STATUS_CLIENT[0]: status})


# -- the Resource AS -----------------------------------------------------------------------


@dataclass
class ResourceAS:
    app: Any
    engine: Engine
    store: Store
    issuer: MissionIssuer
    client: TestClient

    def dpop(self, key: Key, *, path: str = "/token", **claims: Any) -> str:
        defaults: dict[str, Any] = {"htu": RAS + path, "htm": "POST", "iat": int(time.time())}
        return make_proof(key, **{**defaults, **claims})

    def redeem(self, assertion: str | None, *, key: Key | None = None,
               auth: tuple[str, str] | None = AGENT, dpop: str | None = None,
               **params: Any) -> httpx.Response:
        """POST /token with the JWT bearer grant; a DPoP proof of ``key`` unless ``dpop``."""
        data = {"grant_type": JWT_BEARER, "assertion": assertion, **params}
        headers = {}
        proof = dpop if dpop is not None else (self.dpop(key) if key is not None else None)
        if proof is not None:
            headers["DPoP"] = proof
        return self.client.post("/token", auth=auth, headers=headers,
                                data={k: v for k, v in data.items() if v is not None})

    def introspect(self, token: str, auth: tuple[str, str] = ERP_RS) -> dict[str, Any]:
        response = self.client.post("/introspect", data={"token": token}, auth=auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def jwks(self) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get("/jwks").json()
        return body

    @contextmanager
    def reaching_origin(self, handler: Callable[[httpx.Request], httpx.Response]
                        ) -> Iterator[None]:
        """Calls to the origin are answered by ``handler`` for the block (a down origin, a
        forged status answer; :func:`through` passes the others on to the origin app)."""
        settings = self.issuer.settings
        previous = trusted_origins_of(self.issuer)
        with httpx.Client(transport=httpx.MockTransport(handler)) as client:
            attach_trusted_origins(self.issuer, TrustedOrigins(
                settings.trusted_origins, client=client, jwks_min_refresh_seconds=0))
            try:
                yield
            finally:
                attach_trusted_origins(self.issuer, previous)


def through(origin: Origin, handler: Callable[[httpx.Request], httpx.Response | None]
            ) -> Callable[[httpx.Request], httpx.Response]:
    """A MockTransport handler: ``handler``'s answer, or else the origin app's."""
    def route(request: httpx.Request) -> httpx.Response:
        answer = handler(request)
        if answer is not None:
            return answer
        forwarded = origin.client.request(request.method, str(request.url),
                                          headers=dict(request.headers),
                                          content=request.read())
        return httpx.Response(forwarded.status_code, headers=forwarded.headers,
                              content=forwarded.content)
    return route


def build_resource_as(database_url: str, data_dir: Path, origin_http: httpx.Client, *,
                      status_endpoint: str = "") -> ResourceAS:
    """The Resource AS on ``database_url`` (migrated here), calling the origin through
    ``origin_http``; its JWKS cache refetches for every unknown kid (tests must not depend
    on the 5 s rate limit)."""
    upgrade(database_url)
    tenant_file = data_dir / "partner-tenant.toml"
    data_dir.mkdir(parents=True, exist_ok=True)
    tenant_file.write_text(RAS_TENANT)
    settings = Settings(
        issuer=RAS, role="resource_as", database_url=database_url, data_dir=data_dir,
        config_file=None, tenant_file=tenant_file, expiry_sweep_seconds=0,
        dpop_nonce_required=False,
        trusted_origins=(TrustedOrigin(
            issuer=ORIGIN, status_client_id=STATUS_CLIENT[0],
            status_client_secret=STATUS_CLIENT[1], status_endpoint=status_endpoint),))
    engine = create_engine_for(database_url, **POOL)
    store = Store(engine)
    ensure_signing_key(store, now_utc())
    app = create_app(settings, engine=engine, http_client=origin_http)
    issuer: MissionIssuer = app.state.issuer
    attach_trusted_origins(issuer, TrustedOrigins(settings.trusted_origins, client=origin_http,
                                                  jwks_min_refresh_seconds=0))
    client = TestClient(app, base_url=RAS, follow_redirects=False)
    return ResourceAS(app, engine, store, issuer, client)


# -- what the Resource AS holds ------------------------------------------------------------


def snapshot(engine: Engine) -> dict[str, Any]:
    """What a redemption writes: issued tokens, spent ID-JAG jtis, non-refusal audit
    records. (``remote_missions`` is what the origin said, recorded whatever the outcome.)"""
    with Store(engine).read() as session, session.begin():
        return {
            "issued_tokens": sorted(session.execute(
                select(IssuedToken.jti, IssuedToken.revoked_at.is_not(None))).all()),
            "spent_id_jags": sorted(session.scalars(
                select(SingleUseId.value).where(SingleUseId.namespace == REPLAY_NAMESPACE))),
            "audit_records": sorted(session.execute(
                select(AuditRecord.seq, AuditRecord.event)
                .where(AuditRecord.event.not_like(f"%{REFUSAL_SUFFIX}"))).all()),
        }


def refusal_events(engine: Engine, after_seq: int) -> list[tuple[str, Any]]:
    with Store(engine).read() as session, session.begin():
        rows = session.execute(
            select(AuditRecord.event, AuditRecord.data)
            .where(AuditRecord.seq > after_seq, AuditRecord.event.like(f"%{REFUSAL_SUFFIX}"))
            .order_by(AuditRecord.seq)).all()
    return [(event, data.get("error")) for event, data in rows]


def last_seq(engine: Engine) -> int:
    with Store(engine).read() as session, session.begin():
        return int(session.scalar(
            select(AuditRecord.seq).order_by(AuditRecord.seq.desc()).limit(1)) or 0)


def remote_row(engine: Engine, mission_id: str) -> tuple[str, int] | None:
    with Store(engine).read() as session, session.begin():
        row = session.execute(select(RemoteMission.state, RemoteMission.version)
                              .where(RemoteMission.mission_id == mission_id)).first()
    return None if row is None else (row.state, row.version)


def refused(ras: ResourceAS, send: Any, *, status: int, error: str,
            audited: bool = True) -> dict[str, Any]:
    """``send()`` is refused with ``status``/``error``, issues and changes nothing, and
    leaves one ``token.refused`` audit record (none for an unauthenticated request)."""
    before = snapshot(ras.engine)
    seq = last_seq(ras.engine)
    response = send()
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert body.get("error_description"), body
    assert snapshot(ras.engine) == before, "a refused redemption changed the store"
    expected = [("token.refused", error)] if audited else []
    assert refusal_events(ras.engine, seq) == expected
    return body
