"""HTTP routes of token management: introspection (RFC 7662), revocation (RFC 7009) and
dynamic client registration (RFC 7591).

Thin, like web/oauth.py: read the request, let the issuer run the Authlib endpoint in one
transaction, send what it answered.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from missionbound.issuer.introspection import (
    INTROSPECTION,
    AccessTokenKeys,
    MissionIntrospectionEndpoint,
)
from missionbound.issuer.registration import (
    CLIENT_REGISTRATION,
    MissionClientRegistrationEndpoint,
)
from missionbound.issuer.revocation import REVOCATION, MissionRevocationEndpoint
from missionbound.issuer.server import MissionIssuer, OAuthRequest
from missionbound.mission.errors import InvalidRequest
from missionbound.web.oauth import FormParams, get_issuer, oauth_request, to_response

router = APIRouter(tags=["oauth"])

# RFC 7591 section 3.1: the registration request is a JSON document.
JSON_TYPE = "application/json"

def register_token_management(issuer: MissionIssuer) -> None:
    """Register the three endpoints on ``issuer`` (create_app does, once per app).

    Introspection and revocation share one cache of the AS's verification keys.
    """
    keys = AccessTokenKeys()
    issuer.register_endpoint(MissionIntrospectionEndpoint(keys))
    issuer.register_endpoint(MissionRevocationEndpoint(keys))
    issuer.register_endpoint(MissionClientRegistrationEndpoint())


Issuer = Annotated[MissionIssuer, Depends(get_issuer)]


async def json_body(request: Request) -> bytes:
    """The raw JSON body; parsed (strictly) by the registration endpoint, which answers a
    malformed one with RFC 7591's ``invalid_client_metadata``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        raise InvalidRequest(f"the registration request body must be {JSON_TYPE}")
    return await request.body()


JsonBody = Annotated[bytes, Depends(json_body)]


def _endpoint(issuer: MissionIssuer, name: str) -> Any:
    def handle(oauth: OAuthRequest) -> Any:
        return issuer.create_endpoint_response(name, oauth)

    return handle


@router.post("/introspect", summary="Token introspection (RFC 7662) with the Mission projection")
def introspect(request: Request, params: FormParams, issuer: Issuer) -> Response:
    oauth = oauth_request(issuer, request, params, "/introspect")
    # Introspection writes nothing (a refusal's audit record has its own transaction): a
    # read transaction, which on SQLite does not queue for the write lock.
    return to_response(issuer.run(oauth, _endpoint(issuer, INTROSPECTION), read_only=True))


@router.post("/revoke", summary="Token revocation (RFC 7009); never revokes a Mission")
def revoke(request: Request, params: FormParams, issuer: Issuer) -> Response:
    oauth = oauth_request(issuer, request, params, "/revoke")
    return to_response(issuer.run(oauth, _endpoint(issuer, REVOCATION)))


@router.post("/register", summary="Dynamic Client Registration (RFC 7591), open",
             status_code=201)
def register(request: Request, body: JsonBody, issuer: Issuer) -> Response:
    if not issuer.settings.registration_enabled:
        # Not offered by this deployment: the same 404 as any path it does not serve.
        raise HTTPException(status_code=404)
    oauth = oauth_request(issuer, request, [], "/register")
    oauth.registration_body = body
    return to_response(issuer.run(oauth, _endpoint(issuer, CLIENT_REGISTRATION)))
