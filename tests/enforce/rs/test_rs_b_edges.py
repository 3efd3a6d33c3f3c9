"""Edges of the RS kit found in review: the middleware when two declared routes match one
path, repeated query parameters, two guard dependencies on one route, a malformed
Content-Length, and configurations that would claim more than they do. Each refusal leaves
the route handler uncalled."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from missionbound.enforce.rs import (
    MissionContext,
    MissionMiddleware,
    MissionStateView,
    ObservedState,
    Protect,
    install,
    json_field,
    query_param,
    require_mission,
)
from missionbound.enforce.rs.guard import MissionGuard, protected_resource_metadata_url
from tests.enforce.rs.rs_support import (
    BASE,
    READ,
    READ_ENTRY,
    RESOURCE,
    WRITE,
    T,
    bound_token,
    guard_for,
    proof,
)
from tests.protocol.proofs import generate_key

# The dependencies are built inside each test, so they are given as default values: a string
# annotation (postponed annotations) could not name a local.
EXPORT = "invoices.export"
PAY = "payments.execute"


def dpop_headers(key: Any, access_token: str, method: str, path: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {access_token}",
            "DPoP": proof(key, access_token, method=method, path=path)}


def test_two_declared_routes_matching_one_path_with_different_actions_refuse_it() -> None:
    # The app would run its export route for /api/invoices/export; the table's first match
    # is the read route. Which one runs is the app's business: the middleware refuses.
    ran: list[str] = []

    async def export(request: Request) -> JSONResponse:
        ran.append("export")
        return JSONResponse({})

    async def read(request: Request) -> JSONResponse:
        ran.append("read")
        return JSONResponse({})

    app = MissionMiddleware(
        Starlette(routes=[Route("/api/invoices/export", export),
                          Route("/api/invoices/{invoice_id}", read)]),
        guard=guard_for(),
        routes=[Protect("GET", "/api/invoices/{invoice_id}", READ),
                Protect("GET", "/api/invoices/export", EXPORT)])
    key = generate_key()
    token = bound_token(key, [READ_ENTRY])
    client = TestClient(app, base_url=BASE)
    refused = client.get("/api/invoices/export",
                         headers=dpop_headers(key, token, "GET", "/api/invoices/export"))
    assert refused.status_code == 403
    assert refused.json()["reason"] == "route_not_declared"
    assert ran == []
    allowed = client.get("/api/invoices/inv-1",
                         headers=dpop_headers(key, token, "GET", "/api/invoices/inv-1"))
    assert allowed.status_code == 200
    assert ran == ["read"]


def test_a_bound_query_parameter_sent_twice_is_refused() -> None:
    ran: list[list[str]] = []
    guard = guard_for()
    app = FastAPI()
    install(app, guard)
    pays = require_mission(guard, PAY, bind={"vendors": query_param("vendor")})

    @app.get("/api/pay")
    async def pay(request: Request,
                  mission: MissionContext = Depends(pays)) -> dict[str, Any]:  # noqa: B008
        ran.append(request.query_params.getlist("vendor"))
        return {}

    key = generate_key()
    entry = {"type": T, "resource": RESOURCE, "actions": [PAY],
             "constraints": {"vendors": ["acme"]}}
    token = bound_token(key, [entry])
    client = TestClient(app, base_url=BASE)
    twice = client.get("/api/pay?vendor=evil&vendor=acme",
                       headers=dpop_headers(key, token, "GET", "/api/pay"))
    assert twice.status_code == 400
    assert twice.json()["reason"] == "parameter_invalid"
    assert ran == []
    once = client.get("/api/pay?vendor=acme", headers=dpop_headers(key, token, "GET", "/api/pay"))
    assert once.status_code == 200
    assert ran == [["acme"]]


def test_two_guard_dependencies_on_one_route_spend_the_proof_once() -> None:
    guard = guard_for()
    app = FastAPI()
    install(app, guard)
    reads, writes = require_mission(guard, READ), require_mission(guard, WRITE)
    ran: list[str] = []

    @app.get("/api/both")
    async def both(read: MissionContext = Depends(reads),  # noqa: B008
                   write: MissionContext = Depends(writes)) -> dict[str, Any]:  # noqa: B008
        ran.append(read.action + "+" + write.action)
        return {}

    key = generate_key()
    token = bound_token(key, [READ_ENTRY, {"type": T, "resource": RESOURCE, "actions": [WRITE]}])
    client = TestClient(app, base_url=BASE)
    headers = dpop_headers(key, token, "GET", "/api/both")
    assert client.get("/api/both", headers=headers).status_code == 200
    assert ran == [f"{READ}+{WRITE}"]
    # The same proof on another request is still a replay.
    again = client.get("/api/both", headers=headers)
    assert again.status_code == 401
    assert again.json()["reason"] == "replayed_proof"
    assert ran == [f"{READ}+{WRITE}"]


@pytest.mark.parametrize("declared", ["\u00b2", "1" * 5000, "-1", "12 "])
def test_a_content_length_that_is_not_a_length_is_a_400(declared: str) -> None:
    guard = guard_for()
    ran: list[str] = []

    async def post(request: Request) -> JSONResponse:
        ran.append("post")
        return JSONResponse({})

    app = MissionMiddleware(
        Starlette(routes=[Route("/api/journal", post, methods=["POST"])]), guard=guard,
        routes=[Protect("POST", "/api/journal", WRITE,
                        bind={"vendors": json_field("v")})])
    key = generate_key()
    token = bound_token(key, [{"type": T, "resource": RESOURCE, "actions": [WRITE],
                               "constraints": {"vendors": ["acme"]}}])
    headers = [(b"authorization", f"DPoP {token}".encode()),
               (b"dpop", proof(key, token, method="POST", path="/api/journal").encode()),
               (b"content-length", declared.encode()), (b"host", b"testserver")]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"v": "acme"}', "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/journal", "raw_path": b"/api/journal",
             "root_path": "", "query_string": b"", "headers": headers,
             "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 400
    assert ran == []


def test_a_state_source_at_rs_b_is_refused_at_construction() -> None:
    class Active:
        def observe(self, mission_id: str, *, access_token: str) -> ObservedState:
            return ObservedState(mission_id, "active", 1, 0.0)

    with pytest.raises(ValueError, match="RS-C"):
        guard_for(state=MissionStateView(Active()))


def test_the_metadata_url_keeps_the_resource_path_as_it_is() -> None:
    assert protected_resource_metadata_url("https://x.example/api/") == \
        "https://x.example/.well-known/oauth-protected-resource/api/"
    assert protected_resource_metadata_url("https://x.example/") == \
        "https://x.example/.well-known/oauth-protected-resource"
    with pytest.raises(ValueError, match="query"):
        MissionGuard(resource="https://x.example/api?tenant=1", issuers=[])
