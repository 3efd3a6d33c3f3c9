"""HTTP routes of Mission governance (PROFILE.md section 10): ``/mission/status`` and
``/mission/lifecycle``. Details, examples and errors: docs/mission-governance.md.

Thin, like web/oauth.py: read the form (and, for the lifecycle endpoint, the browser session
cookie), let the issuer answer in one transaction, send what it answered.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from missionbound.issuer.governance_callers import BrowserCredentials
from missionbound.issuer.lifecycle import answer_lifecycle_request
from missionbound.issuer.mission_status import answer_status_request
from missionbound.web.oauth import FormParams, Issuer, oauth_request, to_response
from missionbound.web.sessions import SESSION_COOKIE, read_browser_session

router = APIRouter(tags=["mission governance"])

STATUS_PATH = "/mission/status"
LIFECYCLE_PATH = "/mission/lifecycle"


@router.post(STATUS_PATH, summary="Signed Mission Status for an audience (PROFILE.md section 10)")
def mission_status(request: Request, params: FormParams, issuer: Issuer) -> Response:
    oauth = oauth_request(issuer, request, params, STATUS_PATH)
    return to_response(answer_status_request(issuer, oauth))


@router.post(LIFECYCLE_PATH,
             summary="Revoke, suspend, resume or complete a Mission (PROFILE.md section 7)")
def mission_lifecycle(request: Request, params: FormParams, issuer: Issuer) -> Response:
    oauth = oauth_request(issuer, request, params, LIFECYCLE_PATH)
    # The secret is read before the request's transaction opens (see MissionIssuer.run).
    session = read_browser_session(request.cookies.get(SESSION_COOKIE),
                                   secret=issuer.secret("browser-session"), now=oauth.now)
    browser = BrowserCredentials(user=session.user, csrf_token=session.csrf_token)
    return to_response(answer_lifecycle_request(issuer, oauth, browser=browser))
