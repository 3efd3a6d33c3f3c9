"""HTTP routes of the OAuth endpoints: PAR (RFC 9126) and token (RFC 6749 section 3.2).

Thin: read the form, build an :class:`~missionbound.issuer.server.OAuthRequest`, let the
issuer run it in one transaction, send what it answered.
"""

from __future__ import annotations

from typing import Annotated, Any, cast
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from missionbound.issuer.par import push_authorization_request
from missionbound.issuer.server import MissionIssuer, OAuthRequest, OAuthResponse
from missionbound.mission.errors import InvalidRequest
from missionbound.web.metrics import count_token_answer

router = APIRouter(tags=["oauth"])

# RFC 6749 section 3.2 and RFC 9126 section 2.1: form-encoded requests only.
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 200
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def get_issuer(request: Request) -> MissionIssuer:
    return cast(MissionIssuer, request.app.state.issuer)


async def form_params(request: Request) -> list[tuple[str, str]]:
    """The request body's parameters, refused with ``invalid_request`` unless it is a UTF-8
    ``application/x-www-form-urlencoded`` body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise InvalidRequest(f"the request body must be {FORM_TYPE}")
    body = await request.body()
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8") from None
    except ValueError:
        raise InvalidRequest(f"the request has more than {MAX_FORM_FIELDS} parameters") from None


FormParams = Annotated[list[tuple[str, str]], Depends(form_params)]
Issuer = Annotated[MissionIssuer, Depends(get_issuer)]


def oauth_request(issuer: MissionIssuer, request: Request, params: list[tuple[str, str]],
                  path: str) -> OAuthRequest:
    # The public URL, not the one the proxy forwarded: it is what DPoP proofs sign (htu)
    # and what Authlib checks for https.
    return OAuthRequest(
        method=request.method,
        url=issuer.endpoint_url(path),
        headers=request.headers,
        params=params,
        dpop_headers=request.headers.getlist("dpop"),
        now=issuer.clock(),
    )


def to_response(answer: OAuthResponse) -> Response:
    headers = {**dict(answer.headers), **NO_STORE}
    if isinstance(answer.body, dict):
        return JSONResponse(answer.body, status_code=answer.status, headers=headers)
    return Response(str(answer.body or ""), status_code=answer.status, headers=headers)


@router.post("/par", summary="Pushed Authorization Request (RFC 9126) with a Mission Intent",
             status_code=201)
def par(request: Request, params: FormParams, issuer: Issuer) -> Response:
    oauth = oauth_request(issuer, request, params, "/par")
    return to_response(issuer.run(oauth, lambda r: push_authorization_request(issuer, r)))


@router.post("/token", summary="Token endpoint (RFC 6749): authorization_code, refresh_token")
def token(request: Request, params: FormParams, issuer: Issuer) -> Response:
    oauth = oauth_request(issuer, request, params, "/token")
    answer: Any = issuer.run(oauth, issuer.create_token_response)
    count_token_answer(request, params, answer)
    return to_response(answer)
