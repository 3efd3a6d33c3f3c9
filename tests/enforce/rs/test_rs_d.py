"""RS-D (missionbound/enforce/rs/pdp_client.py): the Resource Server asks the real Mission
PDP about every consequential action, on SQLite and PostgreSQL.

The PDP is the real application (``create_app`` with the demo tenant, tests/issuer/flow.py)
answering ``POST /access/v1/evaluation`` with ``demo-rs``'s credentials; the Mission is
approved through the real consent flow and the token is DPoP-bound. The Resource Server
under test is a small API for the demo ERP's resource (``<issuer>/demo/erp``), on FastAPI
(``require_mission``) and Starlette (``MissionMiddleware``), reaching the AS over HTTP
through a :class:`~tests.demo.test_erp.Loopback` (an httpx client into the same app).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
import structlog
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tests.issuer.flow as flow_module
from missionbound.config import ENV_PREFIX
from missionbound.enforce.rs import (
    MissionContext,
    MissionGuard,
    MissionMiddleware,
    PdpClient,
    Protect,
    Tier,
    TrustedIssuer,
    install,
    json_field,
    mission_context,
    money,
    require_mission,
)
from missionbound.enforce.rs.pdp_client import PdpDenied, PdpUnavailable, judge
from missionbound.mission.canonical import digest_json
from missionbound.protocol.dpop import access_token_hash
from missionbound.protocol.jwks import JwksCache
from missionbound.store.models import EvidenceRecord
from missionbound.store.transactions import Store
from missionbound.web.app import create_app
from tests.demo.test_erp import Loopback
from tests.enforce.rs import rs_support
from tests.issuer.conftest import flow_database_url  # noqa: F401 (the shared fixture)
from tests.issuer.flow import ERP, ISSUER, Flow, Grant, build_flow
from tests.issuer.governance_support import DEMO_RS, governance
from tests.protocol.proofs import generate_key, make_proof

WRITE = "journal-entries.write"
READ = "invoices.read"
MAX_VALUE = {"max_value": money(json_field("amount"), json_field("currency"))}
SURFACES = ("fastapi", "starlette")
ENTRY = {"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"}


@dataclass
class World:
    """The AS + PDP app (``flow``) and an HTTP client into it (the Resource Server's
    network)."""

    flow: Flow
    http: httpx.Client


@pytest.fixture(scope="module")
def world(flow_database_url: str,  # noqa: F811 (the imported fixture)
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    loopback = Loopback()
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        patch.setattr(flow_module, "create_app", partial(create_app,
                                                         http_client=loopback.client))
        built = build_flow(flow_database_url, tmp_path_factory.mktemp("rs-d"))
    loopback.target = TestClient(built.app, base_url=ISSUER, follow_redirects=False)
    try:
        yield World(built, loopback.client)
    finally:
        loopback.target.close()
        loopback.client.close()
        built.client.close()
        built.engine.dispose()


@pytest.fixture
def flow(world: World) -> Flow:
    return world.flow


@dataclass
class RsD:
    """An RS-D API for the demo ERP's resource and what its handlers did."""

    client: TestClient
    guard: MissionGuard
    ran: list[MissionContext] = field(default_factory=list)


def rs_d_guard(pdp: PdpClient, http: httpx.Client,
               clock: Callable[[], datetime] | None = None) -> MissionGuard:
    return MissionGuard(resource=ERP, issuers=[TrustedIssuer(ISSUER, keys=JwksCache(
        f"{ISSUER}/jwks", client=http))], tier=Tier.RS_D, pdp=pdp, dpop_required=True,
        public_base_url=ISSUER, labels=("finance",), clock=clock or (lambda: datetime.now(UTC)))


def build(surface: str, guard: MissionGuard, ran: list[MissionContext]) -> Any:
    def answer(context: MissionContext) -> JSONResponse:
        ran.append(context)
        return JSONResponse({"evaluation_id": context.evaluation_id}, status_code=201)

    def broken(context: MissionContext) -> JSONResponse:
        ran.append(context)
        raise RuntimeError("the ledger is down")

    def refused(context: MissionContext) -> JSONResponse:
        ran.append(context)
        return JSONResponse({"evaluation_id": context.evaluation_id}, status_code=409)

    if surface == "fastapi":
        app = FastAPI()
        install(app, guard, serve_metadata=False)
        write = Depends(require_mission(guard, WRITE, bind=MAX_VALUE))
        read = Depends(require_mission(guard, READ))
        plain = Depends(require_mission(guard, READ, consequential=False))

        @app.post("/demo/erp/journal-entries")
        async def post_entry(mission: MissionContext = write) -> JSONResponse:
            return answer(mission)

        @app.get("/demo/erp/invoices/{invoice_id}")
        async def get_invoice(invoice_id: str, mission: MissionContext = read) -> JSONResponse:
            return answer(mission)

        @app.get("/demo/erp/catalogue")
        async def catalogue(mission: MissionContext = plain) -> JSONResponse:
            return answer(mission)

        @app.post("/demo/erp/broken-entries")
        async def post_broken(mission: MissionContext = write) -> JSONResponse:
            return broken(mission)

        @app.post("/demo/erp/refused-entries")
        async def post_refused(mission: MissionContext = write) -> JSONResponse:
            return refused(mission)

        return app

    async def handler(request: Request) -> JSONResponse:
        return answer(mission_context(request))

    async def broken_handler(request: Request) -> JSONResponse:
        return broken(mission_context(request))

    async def refused_handler(request: Request) -> JSONResponse:
        return refused(mission_context(request))

    table = [Protect("POST", "/demo/erp/journal-entries", WRITE, bind=MAX_VALUE),
             Protect("POST", "/demo/erp/broken-entries", WRITE, bind=MAX_VALUE),
             Protect("POST", "/demo/erp/refused-entries", WRITE, bind=MAX_VALUE),
             Protect("GET", "/demo/erp/invoices/{invoice_id}", READ),
             Protect("GET", "/demo/erp/catalogue", READ, consequential=False)]
    return Starlette(routes=[
        Route("/demo/erp/journal-entries", handler, methods=["POST"]),
        Route("/demo/erp/broken-entries", broken_handler, methods=["POST"]),
        Route("/demo/erp/refused-entries", refused_handler, methods=["POST"]),
        Route("/demo/erp/invoices/{invoice_id}", handler),
        Route("/demo/erp/catalogue", handler),
    ], middleware=[Middleware(MissionMiddleware, guard=guard, routes=table)])


@pytest.fixture(params=SURFACES)
def rs(request: pytest.FixtureRequest, world: World) -> Iterator[RsD]:
    yield from make_rs(request.param, world, PdpClient(
        ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1], http_client=world.http))


def make_rs(surface: str, world: World, pdp: PdpClient,
            clock: Callable[[], datetime] | None = None) -> Iterator[RsD]:
    guard = rs_d_guard(pdp, world.http, clock)
    ran: list[MissionContext] = []
    with TestClient(build(surface, guard, ran), base_url=ISSUER) as client:
        yield RsD(client, guard, ran)
    guard.close()


def send(flow: Flow, rs: RsD, grant: Grant, method: str, path: str,
         body: Any = None, content: bytes | None = None) -> httpx.Response:
    key = grant.dpop_key
    assert key is not None
    url = ISSUER + path
    proof = make_proof(key, htm=method, htu=url, iat=int(flow.now().timestamp()),
                       ath=access_token_hash(grant.access_token))
    headers = {"Authorization": f"DPoP {grant.access_token}", "DPoP": proof}
    if body is not None:
        content = json.dumps(body).encode()
    if content is not None:
        headers["Content-Type"] = "application/json"
    return rs.client.request(method, url, headers=headers, content=content)


def new_grant(flow: Flow) -> Grant:
    return flow.grant(dpop_key=generate_key())


def decisions(flow: Flow, mission_id: str, kind: str = "decision") -> list[dict[str, Any]]:
    with Store(flow.engine).read() as session, session.begin():
        rows = session.scalars(select(EvidenceRecord).where(
            EvidenceRecord.kind == kind, EvidenceRecord.mission_id == mission_id
        ).order_by(EvidenceRecord.id)).all()
        return [dict(row.record) for row in rows]


def executions(flow: Flow, mission_id: str) -> list[dict[str, Any]]:
    return decisions(flow, mission_id, "execution")


# -- permit ---------------------------------------------------------------------------------


def test_a_permitted_write_runs_once_under_the_pdps_evaluation_id(flow: Flow, rs: RsD) -> None:
    granted = new_grant(flow)
    response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries", ENTRY)
    assert response.status_code == 201, response.text
    [context] = rs.ran
    evaluation_id = response.json()["evaluation_id"]
    assert isinstance(evaluation_id, str) and evaluation_id == context.evaluation_id
    assert context.decision is not None
    assert context.decision.parameter_digest == digest_json(ENTRY)
    assert dict(context.decision.parameters) == ENTRY
    # The PDP recorded its decision under the same id, for this action and these parameters.
    [decided] = [d for d in decisions(flow, granted.mission_id)
                 if d["evaluation_id"] == evaluation_id]
    assert decided["action"]["name"] == WRITE
    assert decided["audience"] == ERP
    assert decided.get("parameter_digest") == digest_json(ENTRY), decided


def test_a_consequential_read_is_decided_by_the_pdp_too(flow: Flow, rs: RsD) -> None:
    granted = new_grant(flow)
    response = send(flow, rs, granted, "GET", "/demo/erp/invoices/inv-acme-1")
    assert response.status_code == 201, response.text
    [context] = rs.ran
    assert context.evaluation_id is not None
    assert dict(context.decision.parameters) == {"invoice_id": "inv-acme-1"}  # type: ignore[union-attr]
    assert [d["action"]["name"] for d in decisions(flow, granted.mission_id)] == [READ]


def test_a_route_marked_not_consequential_is_not_sent_to_the_pdp(flow: Flow, rs: RsD) -> None:
    granted = new_grant(flow)
    response = send(flow, rs, granted, "GET", "/demo/erp/catalogue")
    assert response.status_code == 201, response.text
    assert rs.ran[0].evaluation_id is None and rs.ran[0].decision is None
    assert decisions(flow, granted.mission_id) == []


# -- deny -----------------------------------------------------------------------------------


def test_a_revoked_mission_is_denied_by_the_pdp_at_once(flow: Flow, rs: RsD) -> None:
    """RS-B alone would pass the still unexpired token; the PDP knows the Mission's state."""
    granted = new_grant(flow)
    answer = governance(flow).lifecycle(granted.mission_id, "revoke", user="bob")
    assert answer.status_code == 200, answer.text
    response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries", ENTRY)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "insufficient_scope" and body["reason"] == "mission_inactive", body
    assert isinstance(body["evaluation_id"], str) and body["error_description"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert rs.ran == []


def test_over_the_cap_is_refused_by_the_kit_before_the_pdp_is_asked(flow: Flow,
                                                                     rs: RsD) -> None:
    granted = new_grant(flow)
    response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries",
                    {**ENTRY, "amount": "600.00"})
    assert response.status_code == 403 and response.json()["reason"] == "constraint_exceeded"
    assert rs.ran == [] and decisions(flow, granted.mission_id) == []


def test_parameters_that_cannot_be_digested_are_refused_before_the_pdp(flow: Flow,
                                                                       rs: RsD) -> None:
    granted = new_grant(flow)
    response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries",
                    content=b'{"invoice_id": "inv-acme-1", "amount": "120.00", '
                            b'"currency": "USD", "rate": 1.5}')
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "parameter_invalid"
    assert rs.ran == [] and decisions(flow, granted.mission_id) == []


# -- the PDP cannot answer: fail closed -------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
def test_an_unreachable_pdp_is_a_503_and_nothing_runs(world: World, surface: str) -> None:
    flow = world.flow
    dead = PdpClient("http://127.0.0.1:9", client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                     timeout_seconds=0.5)
    for rs in make_rs(surface, world, dead):
        granted = new_grant(flow)
        response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries", ENTRY)
        assert response.status_code == 503, response.text
        assert response.json()["reason"] == "pdp_unreachable"
        assert int(response.headers["retry-after"]) > 0
        assert rs.ran == []
    dead.close()


def test_a_pdp_that_refuses_our_credentials_is_a_503(world: World) -> None:
    flow = world.flow
    wrong = PdpClient(ISSUER, client_id=DEMO_RS[0], client_secret="not-the-secret",
                      http_client=world.http)
    for rs in make_rs("fastapi", world, wrong):
        response = send(flow, rs, new_grant(flow), "POST", "/demo/erp/journal-entries", ENTRY)
        assert response.status_code == 503 and response.json()["reason"] == "pdp_unreachable"
        assert rs.ran == []


# -- configuration and metadata --------------------------------------------------------------


def test_rs_d_needs_a_pdp_and_says_so_in_its_metadata(flow: Flow, rs: RsD) -> None:
    assert rs.guard.metadata()["mission_enforcement_tier"] == "RS-D"
    with pytest.raises(ValueError, match="RS-D"):
        MissionGuard(resource=ERP, issuers=[TrustedIssuer(ISSUER, jwks_uri=ISSUER + "/jwks")],
                     tier=Tier.RS_D)
    with pytest.raises(ValueError, match="RS-D"):
        MissionGuard(resource=ERP, issuers=[TrustedIssuer(ISSUER, jwks_uri=ISSUER + "/jwks")],
                     pdp=PdpClient(ISSUER, client_id="x", client_secret="y"))


# -- the permit's conditions (judge: the executor's checks, runtime-digest 4.5) ---------------

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DIGEST = digest_json(ENTRY)


def permit(**conditions: Any) -> dict[str, Any]:
    return {"decision": True, "context": {"evaluation_id": "dec_1", "conditions": {
        "parameter_digest": DIGEST, "valid_until": "2026-03-02T09:01:00Z", "use_limit": 1,
        **conditions}}}


def test_a_permit_for_these_parameters_in_its_window_is_acted_on() -> None:
    decision = judge(permit(), parameters=ENTRY, parameter_digest=DIGEST, now=NOW)
    assert decision.evaluation_id == "dec_1" and decision.parameter_digest == DIGEST


@pytest.mark.parametrize(("conditions", "reason"), [
    ({"parameter_digest": digest_json({**ENTRY, "amount": "121.00"})}, "parameter_mismatch"),
    ({"valid_until": "2026-03-02T08:59:00Z"}, "permit_expired"),
    ({"obligations": [{"type": "step-up"}]}, "conditions_not_understood"),
    ({"use_limit": 0}, "conditions_not_understood"),
])
def test_a_permit_whose_conditions_this_executor_cannot_meet_is_not_acted_on(
        conditions: dict[str, Any], reason: str) -> None:
    with pytest.raises(PdpDenied) as denied:
        judge(permit(**conditions), parameters=ENTRY, parameter_digest=DIGEST, now=NOW)
    assert denied.value.reason == reason and denied.value.evaluation_id == "dec_1"


@pytest.mark.parametrize("answer", [
    {"decision": True, "context": {}},
    {"decision": True, "context": {"evaluation_id": "dec_1", "conditions": []}},
    {"decision": True, "context": {"evaluation_id": "dec_1",
                                   "conditions": {"valid_until": "tomorrow"}}},
])
def test_an_answer_that_is_not_a_usable_permit_fails_closed(answer: dict[str, Any]) -> None:
    with pytest.raises(PdpUnavailable):
        judge(answer, parameters=ENTRY, parameter_digest=DIGEST, now=NOW)


def test_a_deny_carries_the_pdps_reason() -> None:
    with pytest.raises(PdpDenied) as denied:
        judge({"decision": False, "context": {"evaluation_id": "dec_2",
                                              "reason": "out_of_authority"}},
              parameters=ENTRY, parameter_digest=DIGEST, now=NOW + timedelta(days=1))
    assert denied.value.body()["reason"] == "out_of_authority"
    assert denied.value.body()["evaluation_id"] == "dec_2"



# -- execution reports (runtime-digest 5.3, 7.4) ------------------------------------------------


def test_a_permitted_write_is_reported_completed(flow: Flow, rs: RsD) -> None:
    granted = new_grant(flow)
    response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries", ENTRY)
    assert response.status_code == 201, response.text
    [record] = executions(flow, granted.mission_id)
    assert record["evaluation_id"] == response.json()["evaluation_id"]
    assert record["outcome"] == "completed" and "error" not in record
    assert record["audience"] == ERP and record["emitter"] == {"id": DEMO_RS[0], "role": "pep"}
    assert record["authorized_parameter_digest"] == digest_json(ENTRY)
    assert record["effective_parameter_digest"] == digest_json(ENTRY)


@pytest.mark.parametrize("path", ["/demo/erp/broken-entries", "/demo/erp/refused-entries"])
def test_a_route_that_raises_or_answers_an_error_is_reported_failed(
        flow: Flow, rs: RsD, path: str) -> None:
    granted = new_grant(flow)
    if path.endswith("broken-entries"):
        with pytest.raises(RuntimeError, match="ledger"):
            send(flow, rs, granted, "POST", path, ENTRY)
    else:
        assert send(flow, rs, granted, "POST", path, ENTRY).status_code == 409
    [context] = rs.ran
    [record] = executions(flow, granted.mission_id)
    assert record["evaluation_id"] == context.evaluation_id
    assert record["outcome"] == "failed"


class _SlowAnswer(PdpClient):
    """The real PDP, whose answer reaches the RS two minutes after it was made (the RS's
    clock moves on while it waits): the permit has expired when the route would start."""

    def __init__(self, clock: list[timedelta], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offset = clock

    def evaluate(self, request: Any) -> dict[str, Any]:
        answer = super().evaluate(request)
        self.offset[0] += timedelta(minutes=2)
        return answer


@pytest.mark.parametrize("surface", SURFACES)
def test_a_permit_refused_at_the_rs_is_reported_suppressed(world: World, surface: str) -> None:
    flow = world.flow
    offset = [timedelta(0)]
    slow = _SlowAnswer(offset, ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                       http_client=world.http)
    for rs in make_rs(surface, world, slow, clock=lambda: flow.now() + offset[0]):
        granted = new_grant(flow)
        response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries", ENTRY)
        assert response.status_code == 403 and response.json()["reason"] == "permit_expired"
        assert rs.ran == []
        [record] = executions(flow, granted.mission_id)
        assert record["evaluation_id"] == response.json()["evaluation_id"]
        assert (record["outcome"], record["error"]) == ("suppressed", "permit_expired")
        assert record["effective_parameter_digest"] == digest_json(ENTRY)


@pytest.mark.parametrize("surface", SURFACES)
def test_a_report_the_pdp_does_not_take_leaves_the_answer_as_decided(
        world: World, surface: str) -> None:
    """The intake refuses the report (here: no intake at that URL, 404): logged with the
    Mission and evaluation_id, and the route's answer goes out unchanged."""
    flow = world.flow
    pdp = PdpClient(ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                    http_client=world.http)
    pdp.executions_endpoint = ISSUER + "/no-intake-here"
    for rs in make_rs(surface, world, pdp):
        granted = new_grant(flow)
        with structlog.testing.capture_logs() as logs:
            response = send(flow, rs, granted, "POST", "/demo/erp/journal-entries", ENTRY)
        assert response.status_code == 201, response.text
        assert executions(flow, granted.mission_id) == []
        [unreported] = [e for e in logs if e["event"] == "rs_execution_unreported"]
        assert unreported["evaluation_id"] == response.json()["evaluation_id"]
        assert unreported["mission"] == granted.mission_id
        assert unreported["outcome"] == "completed"


# -- which constraints the kit leaves to the PDP ------------------------------------------------


@pytest.mark.parametrize("surface", rs_support.SURFACES)
def test_consumption_bounds_go_to_the_pdp_at_rs_d_and_are_refused_below(surface: str) -> None:
    """A ``max_calls`` entry: RS-B cannot meter it (403 constraint_unevaluable); RS-D leaves it
    to the PDP (here unreachable: 503), while still checking ``max_value`` itself."""
    entry = {**rs_support.WRITE_ENTRY, "constraints": {
        "max_value": rs_support.CAP, "max_calls": 3}}
    key = generate_key()
    body = {"amount": "10.00", "currency": "USD", "vendor": "acme"}
    path = "/api/journal-entries"

    def post(h: rs_support.Harness, amount: str = "10.00") -> httpx.Response:
        access_token = rs_support.bound_token(key, [entry])
        return h.with_dpop(key, access_token, "POST", path,
                           json_body={**body, "amount": amount})

    with rs_support.harness(surface) as rs_b:
        refused = post(rs_b)
        assert refused.status_code == 403 and refused.json()["reason"] == "constraint_unevaluable"
    dead = PdpClient("http://127.0.0.1:9", client_id="x", client_secret="y",
                     timeout_seconds=0.5)
    guard = rs_support.guard_for(tier=Tier.RS_D, pdp=dead)
    with rs_support.harness(surface, guard) as rs_d:
        assert post(rs_d).json()["reason"] == "pdp_unreachable"
        over = post(rs_d, amount="501.00")  # max_value is still the kit's own check
        assert over.status_code == 403 and over.json()["reason"] == "constraint_exceeded"
        assert rs_d.seen == []
    dead.close()
