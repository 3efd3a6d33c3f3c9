"""HTTP routes of the approval flow: ``/authorize`` (PAR ``request_uri`` only), ``/login``
and ``/consent`` (PROFILE.md section 5). Pages come from :mod:`missionbound.web.pages`;
the decisions from :mod:`missionbound.issuer.authorization`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from missionbound.issuer.authorization import (
    ApprovalFailed,
    AuthorizationPageError,
    ConsentPage,
    Redirect,
    SignInAgain,
    check_front_channel,
    consent_page,
    decide,
)
from missionbound.issuer.server import MissionIssuer
from missionbound.mission.errors import MissionError
from missionbound.tenant import User
from missionbound.web.oauth import get_issuer
from missionbound.web.pages import render_consent, render_error, render_login
from missionbound.web.sessions import (
    SESSION_COOKIE,
    BrowserSession,
    check_csrf,
    encode_browser_session,
    read_browser_session,
    set_session_cookie,
    sign_in,
)

router = APIRouter(tags=["approval"], include_in_schema=True)
Issuer = Annotated[MissionIssuer, Depends(get_issuer)]
MAX_FORM_BYTES = 16384


def _browser_session(issuer: MissionIssuer, request: Request) -> BrowserSession:
    return read_browser_session(
        request.cookies.get(SESSION_COOKIE), secret=issuer.secret("browser-session"),
        now=issuer.clock())


def _with_session(issuer: MissionIssuer, response: Response, session: BrowserSession
                  ) -> Response:
    set_session_cookie(
        response, encode_browser_session(session, secret=issuer.secret("browser-session")),
        secure=issuer.issuer.startswith("https://"))
    return response


def _see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


def _error_page(error: MissionError) -> Response:
    status = error.status if error.status >= 400 else 400
    return render_error(status_code=status, error=error.error, description=error.description)


def _signed_in_user(issuer: MissionIssuer, session: BrowserSession) -> User | None:
    return issuer.tenant.users.get(session.user) if session.user else None


def _safe_next(value: str | None) -> str:
    """Only a path on this server: never an open redirect (RFC 9700 section 4.11)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


async def _form(request: Request) -> dict[str, str]:
    """The form's fields; an oversized or overfull form reads as empty, which then fails
    its CSRF check (400 page) like any forged one."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True,
                              max_num_fields=50))
    except ValueError:
        return {}


Form = Annotated[dict[str, str], Depends(_form)]


@router.get("/authorize", summary="Authorization endpoint (RFC 6749 4.1; PAR request_uri only)")
def authorize(request: Request, issuer: Issuer) -> Response:
    query = dict(request.query_params)
    try:
        check_front_channel(query)
    except MissionError as error:
        return _error_page(error)
    session = _browser_session(issuer, request)
    user = _signed_in_user(issuer, session)
    if user is None:
        target = request.url.path + ("?" + request.url.query if request.url.query else "")
        return _see_other("/login?next=" + quote(target, safe=""))
    try:
        issuer.secret("consent")  # read before the transaction: see MissionIssuer.run
        with issuer.store.begin() as db:
            outcome = consent_page(issuer, db, query, user, issuer.clock(), session.auth_time)
    except SignInAgain:
        target = request.url.path + "?" + request.url.query
        return _see_other("/login?next=" + quote(target, safe=""))
    except MissionError as error:
        return _error_page(error)
    if isinstance(outcome, Redirect):
        return _see_other(outcome.location)
    assert isinstance(outcome, ConsentPage)
    page = render_consent(disclosure=dict(outcome.disclosure),
                          hidden={**outcome.hidden, "csrf_token": session.csrf_token})
    return _with_session(issuer, page, session)


@router.get("/login", summary="Sign-in page")
def login_page(request: Request, issuer: Issuer, next: str | None = None) -> Response:
    session = _browser_session(issuer, request)
    page = render_login(hidden={"csrf_token": session.csrf_token, "next": _safe_next(next)},
                        demo=issuer.tenant.is_demo)
    return _with_session(issuer, page, session)


@router.post("/login", summary="Sign in (form fields username, password, csrf_token, next)")
def login(request: Request, issuer: Issuer, form: Form) -> Response:
    session = _browser_session(issuer, request)
    try:
        check_csrf(session, form.get("csrf_token"))
    except MissionError as error:
        return _with_session(issuer, _error_page(error), session)
    target = _safe_next(form.get("next"))
    user = issuer.tenant.authenticate_user(form.get("username", ""), form.get("password", ""))
    if user is None:
        page = render_login(hidden={"csrf_token": session.csrf_token, "next": target},
                            error="Unknown user name or wrong password.",
                            demo=issuer.tenant.is_demo)
        return _with_session(issuer, page, session)
    return _with_session(issuer, _see_other(target),
                         sign_in(session, user.username, now=issuer.clock()))


@router.post("/consent", summary="The Approver's decision (decision=approve|reject)")
def consent(request: Request, issuer: Issuer, form: Form) -> Response:
    session = _browser_session(issuer, request)
    user = _signed_in_user(issuer, session)
    try:
        check_csrf(session, form.get("csrf_token"))
        if user is None:
            raise AuthorizationPageError("sign in again: the session ended before the decision")
        issuer.secret("consent")  # read before the transaction: see MissionIssuer.run
        with issuer.store.begin() as db:
            outcome = decide(issuer, db, form, user, issuer.clock(), session.auth_time)
    except ApprovalFailed as failed:
        return _see_other(failed.redirect.location)
    except MissionError as error:
        return _error_page(error)
    return _see_other(outcome.location)
