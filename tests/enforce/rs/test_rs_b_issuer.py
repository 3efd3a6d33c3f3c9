"""RS-B end to end with tokens the real Authorization Server minted (tests/issuer/flow.py: PAR,
consent by bob, code redemption with DPoP; RFC 8693 token exchange for the delegate), read by
a guard that fetches the AS's ``/jwks`` like any Resource Server. The protected API is
mounted at ``/demo/erp`` under a host application that serves its RFC 9728 document, as
``serve`` mounts the demo ERP. On both surfaces, on SQLite (the issuer's own suites cover
PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from joserfc.jwk import Key
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from missionbound.config import ENV_PREFIX
from missionbound.enforce.rs import (
    MissionContext,
    MissionGuard,
    MissionMiddleware,
    Protect,
    TrustedIssuer,
    install,
    mission_context,
    require_mission,
)
from missionbound.enforce.rs.guard import metadata_path
from missionbound.protocol.dpop import access_token_hash
from tests.enforce.rs.rs_support import READ, SURFACES, WRITE, WRITE_BIND
from tests.issuer.delegation_support import exchange
from tests.issuer.flow import AGENT, ERP, ISSUER, SUBAGENT, Flow, build_flow
from tests.protocol.proofs import generate_key


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        data = tmp_path_factory.mktemp("rs-b-flow")
        built = build_flow(f"sqlite:///{data / 'missionbound.db'}", data)
    try:
        yield built
    finally:
        built.client.close()
        built.engine.dispose()


class Erp:
    """The protected API at ``/demo/erp``, its guard reading the AS's ``/jwks`` over the
    flow's HTTP client."""

    def __init__(self, flow: Flow, surface: str) -> None:
        self.flow = flow
        self.seen: list[MissionContext] = []
        self.guard = MissionGuard(resource=ERP, http_client=flow.client,
                                  issuers=[TrustedIssuer(ISSUER, jwks_uri=f"{ISSUER}/jwks")])
        api = self._fastapi() if surface == "fastapi" else self._starlette()

        async def metadata(request: Request) -> JSONResponse:
            return JSONResponse(self.guard.metadata())

        host = Starlette(routes=[Route(metadata_path(ERP), metadata),
                                 Mount("/demo/erp", app=api)])
        self.client = TestClient(host, base_url=ISSUER)

    def _answer(self, context: MissionContext) -> JSONResponse:
        self.seen.append(context)
        return JSONResponse({"posted_by": context.subject,
                             "acting_client": context.acting_client})

    def _fastapi(self) -> FastAPI:
        api = FastAPI()
        install(api, self.guard, serve_metadata=False)
        read = Depends(require_mission(self.guard, READ))
        write = Depends(require_mission(self.guard, WRITE, bind=WRITE_BIND))

        @api.get("/invoices")
        async def invoices(mission: MissionContext = read) -> JSONResponse:
            return self._answer(mission)

        @api.post("/journal-entries")
        async def post_entry(mission: MissionContext = write) -> JSONResponse:
            return self._answer(mission)

        return api

    def _starlette(self) -> Starlette:
        async def handler(request: Request) -> JSONResponse:
            return self._answer(mission_context(request))

        table = [Protect("GET", "/invoices", READ),
                 Protect("POST", "/journal-entries", WRITE, bind=WRITE_BIND)]
        return Starlette(
            routes=[Route("/invoices", handler),
                    Route("/journal-entries", handler, methods=["POST"])],
            middleware=[Middleware(MissionMiddleware, guard=self.guard, routes=table)])

    def call(self, key: Key, access_token: str, method: str = "GET", path: str = "/invoices",
             *, proof_key: Key | None = None, **options: Any) -> httpx.Response:
        """``method`` on ``/demo/erp`` + ``path`` with the token under the DPoP scheme and a
        proof by ``proof_key`` (default ``key``) made the way the flow makes them."""
        proof = self.flow.dpop(proof_key or key, path=f"/demo/erp{path}", method=method,
                               ath=access_token_hash(access_token))
        return self.client.request(method, f"/demo/erp{path}",
                                   headers={"Authorization": f"DPoP {access_token}",
                                            "DPoP": proof}, **options)


@pytest.fixture(params=SURFACES)
def erp(request: pytest.FixtureRequest, flow: Flow) -> Iterator[Erp]:
    built = Erp(flow, request.param)
    with built.client:
        yield built
    built.guard.close()


def test_a_token_the_issuer_minted_is_enforced_by_its_mission(erp: Erp, flow: Flow) -> None:
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    token = grant.access_token

    response = erp.call(key, token)
    assert response.status_code == 200, response.text
    context = erp.seen[-1]
    assert context.subject == "alice" and context.mission.id == grant.mission_id
    assert context.mission.origin == ISSUER and context.acting_client == AGENT[0]
    assert context.token.jkt == key.thumbprint() and context.actors == ()

    # The Mission's cap on journal entries (500 USD), at and over it.
    at_cap = erp.call(key, token, "POST", "/journal-entries",
                      json={"invoice_id": "inv-acme-2", "amount": "500.00", "currency": "USD"})
    assert at_cap.status_code == 200, at_cap.text
    assert erp.seen[-1].entry["constraints"] == {"max_value": {"amount": "500.00",
                                                               "currency": "USD"}}
    over = erp.call(key, token, "POST", "/journal-entries",
                    json={"invoice_id": "inv-acme-big", "amount": "900.00", "currency": "USD"})
    assert over.status_code == 403 and over.json()["reason"] == "constraint_exceeded"
    # Sent as a bearer token, or with another key's proof: refused.
    bearer = erp.client.get("/demo/erp/invoices", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401 and bearer.json()["reason"] == "dpop_bound_token_as_bearer"
    stolen = erp.call(key, token, proof_key=generate_key())
    assert stolen.status_code == 401 and stolen.json()["reason"] == "wrong_key"
    assert len(erp.seen) == 2

    # The host serves the mounted API's RFC 9728 document, which every challenge names.
    document = erp.client.get("/.well-known/oauth-protected-resource/demo/erp").json()
    assert document["resource"] == ERP and document["authorization_servers"] == [ISSUER]
    assert document["mission_enforcement_tier"] == "RS-B"
    assert f'resource_metadata="{ISSUER}/.well-known/oauth-protected-resource/demo/erp"' in \
        stolen.headers["www-authenticate"]


def test_a_delegated_token_from_the_token_exchange_acts_as_the_delegate(erp: Erp,
                                                                        flow: Flow) -> None:
    agent_key, delegate_key = generate_key(), generate_key()
    grant = flow.grant(dpop_key=agent_key)
    response = exchange(flow, grant.access_token, key=delegate_key)
    assert response.status_code == 200, response.text
    delegated = response.json()["access_token"]

    allowed = erp.call(delegate_key, delegated)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {"posted_by": "alice", "acting_client": SUBAGENT[0]}
    context = erp.seen[-1]
    assert [actor.sub for actor in context.actors] == [SUBAGENT[0]]
    assert context.mission.id == grant.mission_id
    assert context.entry["delegation"]["allowed_delegates"] == [{"client_id": SUBAGENT[0]}]

    # Journal entries were never delegable: the delegate's token does not carry them.
    write = erp.call(delegate_key, delegated, "POST", "/journal-entries",
                     json={"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"})
    assert write.status_code == 403 and write.json()["reason"] == "action_not_granted"
    # The agent's key does not make the delegate's token usable.
    theirs = erp.call(delegate_key, delegated, proof_key=agent_key)
    assert theirs.status_code == 401 and theirs.json()["reason"] == "wrong_key"
    assert len(erp.seen) == 1
