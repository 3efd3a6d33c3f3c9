"""HTTP routes of the AuthZEN Authorization API 1.0 (docs/authzen.md): the Mission PDP at
``/access/v1/...`` and each resource-policy tenant at ``/pdp/<tenant>/access/v1/...``, with
their metadata under ``/.well-known/authzen-configuration``.

Thin: read the bytes, authenticate the caller, hand the body to
:mod:`missionbound.runtime.authzen` and the decision point, send the JSON back. Wire errors
(AuthZEN 1.0 section 12): 400 for a malformed request, 401 without usable credentials (with
a ``Basic`` challenge), 403 for a caller that may not ask, 404 for an unknown tenant, 413 for
an oversized batch; a deny is HTTP 200. Never FastAPI's 422: the body is read as bytes and
parsed here. ``X-Request-ID`` is echoed by the request middleware on every answer.

Callers are registered clients with a non-empty ``audiences`` (the Resource Servers and PEPs
they speak for), authenticated with ``client_secret_basic`` exactly as at introspection: by
the issuer's Authlib client authentication. A Mission decision is answered only for a
``resource.properties.audience`` among the caller's audiences (decision M47).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

from authlib.oauth2 import OAuth2Error
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from missionbound.config import Settings
from missionbound.issuer.server import MissionIssuer, OAuthRequest
from missionbound.runtime.authzen import (
    MISSION_RUNTIME_CAPABILITY,
    SEARCH_KINDS,
    metadata_document,
    parse_batch,
    parse_body,
    parse_evaluation,
    parse_search,
    run_batch,
)
from missionbound.runtime.errors import (
    AuthZenError,
    CallerForbidden,
    CallerUnauthenticated,
    NotConfigured,
)
from missionbound.runtime.execution import ExecutionIntake, parse_report
from missionbound.runtime.pdp import MissionPDP, PepCaller
from missionbound.runtime.tenants import Tenant

router = APIRouter(tags=["authzen"])

WELL_KNOWN_PATH = "/.well-known/authzen-configuration"
# The name Authlib's client authentication is asked for (any name: the client's registered
# methods decide, OAuthClient.check_endpoint_auth_method).
ENDPOINT_NAME = "authzen"
CALLER_AUTH_METHODS = ["client_secret_basic"]

_ERROR_CODES = {400: "invalid_request", 401: "invalid_client", 403: "access_denied",
                404: "not_found", 409: "conflict", 413: "request_too_large",
                503: "temporarily_unavailable"}


# -- plumbing ------------------------------------------------------------------------------


async def raw_body(request: Request) -> bytes:
    """The body as bytes (the middleware bounds its size); parsed in the endpoint, after the
    caller is authenticated, so an anonymous caller learns nothing about its request."""
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document, separators=(",", ":"), ensure_ascii=False),
                    status_code=status, media_type="application/json")


def authenticate(request: Request) -> PepCaller:
    """The calling PEP, by HTTP Basic with a registered client's secret (the issuer's
    Authlib client authentication, as at introspection), or 401; a client that speaks for
    no resource (no ``audiences``) is 403."""
    if not request.headers.get("authorization"):
        raise CallerUnauthenticated("authenticate with HTTP Basic client credentials")
    issuer = cast(MissionIssuer, request.app.state.issuer)
    oauth = OAuthRequest(method=request.method, url=str(request.url), headers=request.headers,
                         params=(), dpop_headers=[], now=issuer.clock())
    try:
        client = issuer.authenticate_client(oauth, CALLER_AUTH_METHODS, ENDPOINT_NAME)
    except OAuth2Error as error:
        raise CallerUnauthenticated(str(error.description or "client authentication failed")
                                    ) from None
    if not client.audiences:
        raise CallerForbidden(f"client {client.client_id!r} speaks for no resource "
                              "(no audiences): it may not call the PDP")
    return PepCaller(client.client_id, frozenset(client.audiences))


def _body(request: Request, raw: bytes) -> dict[str, Any]:
    settings = cast(Settings, request.app.state.settings)
    return parse_body(raw, request.headers.get("content-type"),
                      max_size=settings.max_request_body_size)


def _tenant(request: Request, name: str) -> Tenant:
    tenants = cast(dict[str, Tenant], request.app.state.pdp_tenants)
    tenant = tenants.get(name)
    if tenant is None:
        raise NotConfigured(404, f"no PDP tenant {name[:64]!r} on this server")
    return tenant


def _mission_pdp(request: Request) -> MissionPDP:
    pdp: MissionPDP | None = getattr(request.app.state, "mission_pdp", None)
    if pdp is None:
        raise NotConfigured(503, "mission PDP not configured")
    return pdp


def check_audience(body: dict[str, Any], caller: PepCaller, where: str = "") -> None:
    """403 when the request names an audience the caller does not speak for. A missing or
    malformed audience is left to the PDP's request parsing (400)."""
    resource = body.get("resource")
    properties = resource.get("properties") if isinstance(resource, dict) else None
    audience = properties.get("audience") if isinstance(properties, dict) else None
    if isinstance(audience, str) and audience not in caller.audiences:
        raise CallerForbidden(f"{where}resource.properties.audience is not a resource client "
                              f"{caller.client_id!r} speaks for")


# -- the Mission PDP -------------------------------------------------------------------------


@router.post("/access/v1/evaluation", summary="Access evaluation (AuthZEN 1.0) against Missions")
def mission_evaluation(request: Request, raw: RawBody) -> Response:
    caller = authenticate(request)
    body = _body(request, raw)
    check_audience(body, caller)
    return _json(_mission_pdp(request).evaluate(body, caller))


@router.post("/access/v1/evaluations",
             summary="Access evaluations (AuthZEN 1.0 batch) against Missions")
def mission_evaluations(request: Request, raw: RawBody) -> Response:
    caller = authenticate(request)
    batch = parse_batch(_body(request, raw))
    if batch.items is None:
        check_audience(batch.top_level, caller)
        return _json(_mission_pdp(request).evaluate(batch.top_level, caller))
    # Checked for every item before any is evaluated: a batch that asks about another PEP's
    # resource is refused whole, so nothing of it is metered or recorded (decision M48).
    for index, item in enumerate(batch.items):
        check_audience(item, caller, f"evaluations[{index}]: ")
    answers = _mission_pdp(request).evaluate_batch(batch.items, caller,
                                                   batch.semantic)
    return _json({"evaluations": answers})


@router.post("/access/v1/search/{kind}", summary="Search (AuthZEN 1.0) against Missions")
def mission_search(kind: str, request: Request, raw: RawBody) -> Response:
    caller = authenticate(request)
    if kind not in SEARCH_KINDS:
        raise NotConfigured(404, f"no search endpoint {kind[:32]!r}")
    body = _body(request, raw)
    check_audience(body, caller)
    # Hints of what one Mission exposes, never permits (runtime-digest section 3.9).
    return _json(_mission_pdp(request).search(kind, body, caller))


# -- the execution intake ------------------------------------------------------------------

EXECUTIONS_PATH = "/mission/executions"


def _execution_intake(request: Request) -> ExecutionIntake:
    """The app's execution intake (runtime/execution.py), built with the Mission PDP by
    web/app.py; without one there are no decisions to report on: 503."""
    intake: ExecutionIntake | None = getattr(request.app.state, "execution_intake", None)
    if intake is None:
        raise NotConfigured(503, "the Mission PDP is not configured on this server")
    return intake


@router.post(EXECUTIONS_PATH, status_code=201,
             summary="Execution Evidence of a permit, reported by the PEP that ran or refused it")
def mission_execution(request: Request, raw: RawBody) -> Response:
    """runtime-digest 5.3 and 7.4: the outcome of a permit this PEP asked for. 201 with the
    record's ids when recorded, 200 with the same ids for a report seen before; 404 for an
    ``evaluation_id`` that is not a decision for one of the caller's audiences; 409 for a
    report that contradicts the recorded one (docs/permits.md "Reporting executions")."""
    caller = authenticate(request)
    report = parse_report(_body(request, raw))
    issuer = cast(MissionIssuer, request.app.state.issuer)
    reported = _execution_intake(request).submit(report, caller, now=issuer.clock())
    return _json(reported.summary(), 201 if reported.created else 200)


# -- resource-policy tenants -----------------------------------------------------------------


@router.post("/pdp/{tenant}/access/v1/evaluation",
             summary="Access evaluation (AuthZEN 1.0) by a resource-policy tenant")
def tenant_evaluation(tenant: str, request: Request, raw: RawBody) -> Response:
    authenticate(request)
    found = _tenant(request, tenant)
    return _json(found.evaluate(parse_evaluation(_body(request, raw))))


@router.post("/pdp/{tenant}/access/v1/evaluations",
             summary="Access evaluations (AuthZEN 1.0 batch) by a resource-policy tenant")
def tenant_evaluations(tenant: str, request: Request, raw: RawBody) -> Response:
    authenticate(request)
    found = _tenant(request, tenant)
    batch = parse_batch(_body(request, raw))
    if batch.items is None:
        return _json(found.evaluate(parse_evaluation(batch.top_level)))
    answers = run_batch(batch.items, batch.semantic,
                        lambda item: found.evaluate(parse_evaluation(item)))
    return _json({"evaluations": answers})


@router.post("/pdp/{tenant}/access/v1/search/{kind}",
             summary="Subject, resource or action search (AuthZEN 1.0) by a tenant")
def tenant_search(tenant: str, kind: str, request: Request, raw: RawBody) -> Response:
    authenticate(request)
    found = _tenant(request, tenant)
    if kind not in SEARCH_KINDS:
        raise NotConfigured(404, f"no search endpoint {kind[:32]!r}")
    return _json(found.search(parse_search(_body(request, raw), kind)))


# -- metadata --------------------------------------------------------------------------------


@router.get(WELL_KNOWN_PATH, summary="PDP metadata (AuthZEN 1.0 section 9) of the Mission PDP")
def mission_pdp_metadata(request: Request) -> Response:
    settings = cast(Settings, request.app.state.settings)
    return _json(metadata_document(settings.issuer,
                                   capabilities=(MISSION_RUNTIME_CAPABILITY,)))


@router.get(WELL_KNOWN_PATH + "/pdp/{tenant}",
            summary="PDP metadata (AuthZEN 1.0 section 9) of a resource-policy tenant")
def tenant_metadata(tenant: str, request: Request) -> Response:
    settings = cast(Settings, request.app.state.settings)
    found = _tenant(request, tenant)
    return _json(metadata_document(f"{settings.issuer}/pdp/{found.name}"))


# -- errors ----------------------------------------------------------------------------------


async def _authzen_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthZenError)
    settings = cast(Settings, request.app.state.settings)
    headers = {"Cache-Control": "no-store"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = f'Basic realm="{settings.issuer}"'
    return JSONResponse({"error": _ERROR_CODES.get(exc.status, "invalid_request"),
                         "error_description": exc.message},
                        status_code=exc.status, headers=headers)


def install(app: FastAPI) -> None:
    """The routes, and AuthZEN errors answered in the project's JSON error shape."""
    app.add_exception_handler(AuthZenError, _authzen_error)
    app.include_router(router)
