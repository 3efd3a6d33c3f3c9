"""HTTP surfaces of the resource_as role (PROFILE.md section 11, docs/resource-as.md): its
token endpoint and the token management endpoints it serves.

Thin, like web/oauth.py. The one difference at ``/token``: an ID-JAG redemption and a Transaction
Token request ask the origin (its keys, its signed Mission Status) *before* the request's
transaction opens (issuer/jwt_bearer.py ``prepare_redemption``, issuer/token_exchange.py
``prepare_exchange``), so that a slow origin never holds this AS's database (on SQLite, its
one writer) for a network round trip.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from missionbound.issuer.introspection import AccessTokenKeys
from missionbound.issuer.jwt_bearer import prepare_redemption
from missionbound.issuer.resource_as_introspection import ResourceASIntrospectionEndpoint
from missionbound.issuer.revocation import MissionRevocationEndpoint
from missionbound.issuer.server import MissionIssuer
from missionbound.issuer.token_exchange import prepare_exchange
from missionbound.web import token_management
from missionbound.web.metrics import count_token_answer
from missionbound.web.oauth import FormParams, Issuer, oauth_request, to_response

router = APIRouter(tags=["oauth"])

# Of token management, a Resource AS serves introspection and revocation of its local
# tokens; clients are configured by its operator, never registered (RFC 7591).
TOKEN_MANAGEMENT_PATHS = frozenset({"/introspect", "/revoke"})


def register_resource_as_endpoints(issuer: MissionIssuer) -> None:
    """Introspection (of local tokens) and revocation, sharing one cache of this AS's keys
    (create_app does it, once per app)."""
    keys = AccessTokenKeys()
    issuer.register_endpoint(ResourceASIntrospectionEndpoint(keys))
    issuer.register_endpoint(MissionRevocationEndpoint(keys))


def token_management_router() -> APIRouter:
    """web/token_management.py's routes a Resource AS serves (/register is not one)."""
    routes: list[Any] = [route for route in token_management.router.routes
                         if getattr(route, "path", None) in TOKEN_MANAGEMENT_PATHS]
    return APIRouter(routes=routes)


@router.post("/token",
             summary="Token endpoint of a Resource AS: ID-JAG redemption (RFC 7523), "
                     "Transaction Tokens (token exchange)")
def token(request: Request, params: FormParams, issuer: Issuer) -> Response:
    oauth = oauth_request(issuer, request, params, "/token")
    # The origin is asked here, outside any transaction; the outcome rides on the request.
    prepare_redemption(issuer, oauth)
    prepare_exchange(issuer, oauth)
    answer: Any = issuer.run(oauth, issuer.create_token_response)
    count_token_answer(request, params, answer)
    return to_response(answer)
