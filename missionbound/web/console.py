"""The web console (``/console/``): people see the Missions they hold a role on (an
administrator every one), read each one's intent, granted authority, anchors, counters and
audit timeline, and suspend, resume, revoke or complete it (PROFILE.md sections 7 and 15;
DESIGN.md "Pages").

Thin routes: read the signed ``mb_session`` cookie (:mod:`missionbound.web.sessions`; people
sign in at the existing ``/login``, which sends them back here with ``next``), read through
:mod:`missionbound.store.mission_queries`, change through the issuer's service for a
signed-in person (:func:`missionbound.issuer.lifecycle.person_changes_lifecycle`, which
checks the form with the endpoint's parsers, decides and audits refusals) and render
``templates/console/``. Who sees and may do what is
:mod:`missionbound.issuer.mission_access`; this module only asks.

Pages carry the hardening headers of every other page (``missionbound.web.pages``: no
script, no framing, ``no-store``) plus ``form-action 'self'``: every console form posts here
and every redirect after one stays on this origin, so the Chrome behaviour that keeps
``form-action`` off the consent page does not apply. A Mission that does not exist and one
the person may not see answer the same 404 page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from math import ceil
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from jinja2 import UndefinedError

from missionbound.issuer.lifecycle import PersonAsk, person_changes_lifecycle
from missionbound.issuer.mission_access import roles_of_user, user_may_see
from missionbound.issuer.server import MissionIssuer
from missionbound.mission.errors import InvalidRequest, InvalidState, MissionError
from missionbound.mission.lifecycle import TERMINAL_STATES, State
from missionbound.mission.record import MISSION_ID, MissionRecord
from missionbound.store import missions
from missionbound.store.evidence import evidence_beside_audit_page
from missionbound.store.lifecycle import MAX_REASON_LENGTH
from missionbound.store.mission_queries import (
    MAX_FILTER_LENGTH,
    ListedMission,
    mission_audit_records,
    search_missions,
    tokens_issued,
)
from missionbound.tenant import User
from missionbound.web.approval import Form
from missionbound.web.console_views import (
    OPERATION_BY_NAME,
    STATE_WORDS,
    instant_text,
    merge_timeline,
    offered_operations,
    state_badge,
)
from missionbound.web.oauth import get_issuer
from missionbound.web.pages import CONTENT_SECURITY_POLICY, render_page
from missionbound.web.sessions import (
    SESSION_COOKIE,
    BrowserSession,
    check_csrf,
    encode_browser_session,
    new_browser_session,
    read_browser_session,
    set_session_cookie,
)

router = APIRouter(tags=["console"], include_in_schema=False)
Issuer = Annotated[MissionIssuer, Depends(get_issuer)]

CONSOLE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY + "; form-action 'self'",
}
PAGE_SIZE = 25
MAX_PAGE = 10_000
TIMELINE_PAGE = 200
GOAL_PREVIEW = 140
_DIGITS = re.compile(r"[0-9]{1,9}")


class _Hidden(Exception):
    """Unknown or not the person's to see: one answer for both."""


# --------------------------------------------------------------------------- sessions


def _browser_session(issuer: MissionIssuer, request: Request) -> BrowserSession:
    return read_browser_session(request.cookies.get(SESSION_COOKIE),
                                secret=issuer.secret("browser-session"), now=issuer.clock())


def _with_session(issuer: MissionIssuer, response: Response, session: BrowserSession
                  ) -> Response:
    set_session_cookie(
        response, encode_browser_session(session, secret=issuer.secret("browser-session")),
        secure=issuer.issuer.startswith("https://"))
    return response


def _viewer(issuer: MissionIssuer, session: BrowserSession) -> User | None:
    return issuer.tenant.users.get(session.user) if session.user else None


def _see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


def _to_sign_in(request: Request) -> RedirectResponse:
    """To the one sign-in form, which sends the person back to this console page."""
    target = request.url.path + ("?" + request.url.query if request.url.query else "")
    return _see_other("/login?next=" + quote(target, safe=""))


# --------------------------------------------------------------------------- rendering


def _page(issuer: MissionIssuer, session: BrowserSession, viewer: User | None, template: str,
          *, status_code: int = 200, **context: Any) -> Response:
    page = render_page(template, status_code=status_code, headers=CONSOLE_HEADERS,
                       viewer=viewer, csrf_token=session.csrf_token,
                       demo=issuer.tenant.is_demo, **context)
    return _with_session(issuer, page, session)


def _error(issuer: MissionIssuer, session: BrowserSession, viewer: User | None, *,
           status_code: int, title: str, description: str) -> Response:
    return _page(issuer, session, viewer, "console/error.html", status_code=status_code,
                 title=title, description=description)


def _not_found(issuer: MissionIssuer, session: BrowserSession, viewer: User | None
               ) -> Response:
    return _error(issuer, session, viewer, status_code=404, title="Mission not found",
                  description="There is no Mission with this id that you may see.")


# --------------------------------------------------------------------------- the list


def _filters(request: Request) -> tuple[dict[str, str], int]:
    """The list's query parameters, checked: an unknown state or an out-of-range page is
    an :class:`InvalidRequest` (a 400 page), never a crash and never ignored."""
    query = request.query_params
    filters = {name: query.get(name, "").strip() for name in ("state", "subject", "client")}
    if filters["state"] and filters["state"] not in {s.value for s in State}:
        raise InvalidRequest(
            "unknown Mission state; choose one of " + ", ".join(s.value for s in State))
    for name in ("subject", "client"):
        if len(filters[name]) > MAX_FILTER_LENGTH:
            raise InvalidRequest(f"the {name} filter is at most {MAX_FILTER_LENGTH} characters")
    page_text = query.get("page", "").strip() or "1"
    if not _DIGITS.fullmatch(page_text) or not 1 <= int(page_text) <= MAX_PAGE:
        raise InvalidRequest(f"page must be a whole number from 1 to {MAX_PAGE}")
    return filters, int(page_text)


def _list_url(filters: Mapping[str, str], page: int) -> str:
    query = {name: value for name, value in filters.items() if value}
    if page > 1:
        query["page"] = str(page)
    return "/console/" + ("?" + urlencode(query) if query else "")


def _row(issuer: MissionIssuer, listed: ListedMission, now: datetime) -> dict[str, Any]:
    record = listed.record
    if record is None:
        return {"mission_id": listed.mission_id, "readable": False}
    goal = str(record.mission_intent.get("goal", ""))
    return {
        "mission_id": record.mission_id,
        "readable": True,
        "badge": state_badge(record, now, issuer.lifecycle_policy),
        "goal": goal if len(goal) <= GOAL_PREVIEW else goal[:GOAL_PREVIEW - 1] + "…",
        "subject": record.subject.sub if record.subject else None,
        "client_id": record.client_id,
        "expiry": record.mission_expiry,
        "expiry_text": instant_text(record.mission_expiry),
    }


@router.get("/console/")
def console_list(request: Request, issuer: Issuer) -> Response:
    session = _browser_session(issuer, request)
    viewer = _viewer(issuer, session)
    if viewer is None:
        return _to_sign_in(request)
    try:
        filters, page = _filters(request)
    except InvalidRequest as error:
        return _error(issuer, session, viewer, status_code=400,
                      title="These filters cannot be used", description=error.description)
    now = issuer.clock()
    with issuer.store.read() as db, db.begin():
        found = search_missions(
            db, now=now, policy=issuer.lifecycle_policy,
            state=State(filters["state"]) if filters["state"] else None,
            subject=filters["subject"] or None, client_id=filters["client"] or None,
            viewer=None if viewer.is_admin else viewer.username,
            offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, ceil(found.total / PAGE_SIZE))
    first = (page - 1) * PAGE_SIZE + 1
    return _page(
        issuer, session, viewer, "console/list.html",
        rows=[_row(issuer, listed, now) for listed in found.missions],
        total=found.total, filters=filters, filtering=any(filters.values()),
        states=[(state.value, STATE_WORDS[state]) for state in State],
        page=page, pages=pages, first=first, last=first + len(found.missions) - 1,
        previous_url=_list_url(filters, page - 1) if page > 1 else None,
        next_url=_list_url(filters, page + 1) if page < pages else None,
    )


# --------------------------------------------------------------------------- one Mission


def _load_visible(issuer: MissionIssuer, viewer: User, mission_id: str, after: int,
                  evidence_after: int = 0) -> dict[str, Any]:
    """Everything the Mission page shows, read in one transaction; :class:`_Hidden` when
    the Mission does not exist or is not the viewer's to see."""
    if not MISSION_ID.fullmatch(mission_id):
        raise _Hidden
    with issuer.store.read() as db, db.begin():
        record = missions.get(db, mission_id)
        if record is None or not user_may_see(viewer, record):
            raise _Hidden
        _check_disclosure(record.consent_disclosure)
        audit = mission_audit_records(db, mission_id, after_seq=after, limit=TIMELINE_PAGE)
        return {
            "record": record,
            "derivations": missions.derivation_count(db, mission_id),
            "tokens": tokens_issued(db, mission_id),
            "audit": audit,
            # The runtime evidence recorded in the period this page of audit records covers.
            "evidence": evidence_beside_audit_page(
                db, mission_id, audit.records, audit_more=audit.more, first_page=after == 0,
                after_sequence=evidence_after, limit=TIMELINE_PAGE),
            "evidence_after": evidence_after,
        }


def _mission_context(issuer: MissionIssuer, viewer: User, loaded: Mapping[str, Any],
                     after: int) -> dict[str, Any]:
    record: MissionRecord = loaded["record"]
    now = issuer.clock()
    badge = state_badge(record, now, issuer.lifecycle_policy)
    roles = roles_of_user(viewer, record)
    audit = loaded["audit"]
    evidence = loaded.get("evidence")
    timeline = merge_timeline(audit.records, evidence.records if evidence else [])
    users = issuer.tenant.users
    client = issuer.tenant.clients.get(record.client_id)

    def person(sub: str | None) -> dict[str, str] | None:
        if sub is None:
            return None
        user = users.get(sub)
        return {"sub": sub, "name": user.display_name if user else sub}

    intent = record.mission_intent
    earlier = max(0, after - TIMELINE_PAGE) if after > 0 else None
    return {
        "m": record,
        "badge": badge,
        "terminal": badge.effective in TERMINAL_STATES,
        "roles": sorted(role.value for role in roles),
        "operations": offered_operations(roles, badge.effective, issuer.lifecycle_policy),
        "subject": person(record.subject.sub if record.subject else None),
        "approver": person(record.approver.sub if record.approver else None),
        "client_name": client.client_name if client else None,
        "intent": {
            "goal": str(intent.get("goal", "")),
            "resources": [str(r) for r in intent.get("resources", []) or []],
            "constraints": [str(c) for c in intent.get("constraints", []) or []],
            "success_criteria": [str(c) for c in intent.get("success_criteria", []) or []],
            "purpose": intent.get("purpose"),
            "requested_expiry": intent.get("mission_expiry"),
            "context": intent.get("context"),
        },
        "d": record.consent_disclosure,
        "created_text": instant_text(record.created_at),
        "activated_text": instant_text(record.activated_at) if record.activated_at else None,
        "expiry_text": instant_text(record.mission_expiry),
        "derivations": loaded["derivations"],
        "tokens": loaded["tokens"],
        "timeline": timeline,
        "timeline_after": after,
        "earlier_url": (f"/console/missions/{record.mission_id}"
                        + (f"?after={earlier}" if earlier else "")) if earlier is not None
        else None,
        "later_url": (
            f"/console/missions/{record.mission_id}?after={audit.records[-1].mission_seq}"
            if audit.more and audit.records else None),
        "more_evidence_url": (
            f"/console/missions/{record.mission_id}?after={after}"
            f"&evidence_after={evidence.records[-1].sequence}"
            if evidence and evidence.more and evidence.records else None),
    }


def _notice(request: Request) -> str | None:
    """The message after a change (the redirect's ``done``); anything else is ignored."""
    operation = OPERATION_BY_NAME.get(request.query_params.get("done", ""))
    if operation is None:
        return None
    if request.query_params.get("repeat") == "1":
        return f"The Mission was already {operation.done}: nothing changed."
    return f"The Mission is now {operation.done}. The change is in the timeline below."


def _after(request: Request, name: str = "after") -> int:
    text = request.query_params.get(name, "").strip() or "0"
    if not _DIGITS.fullmatch(text):
        raise InvalidRequest(f"{name} must be a whole number (a timeline position)")
    return int(text)


@router.get("/console/missions/{mission_id}")
def console_mission(mission_id: str, request: Request, issuer: Issuer) -> Response:
    session = _browser_session(issuer, request)
    viewer = _viewer(issuer, session)
    if viewer is None:
        return _to_sign_in(request)
    try:
        after = _after(request)
        evidence_after = _after(request, "evidence_after")
    except InvalidRequest as error:
        return _error(issuer, session, viewer, status_code=400,
                      title="This page address cannot be used", description=error.description)
    try:
        loaded = _load_visible(issuer, viewer, mission_id, after, evidence_after)
    except _Hidden:
        return _not_found(issuer, session, viewer)
    except MissionError as error:
        return _unreadable(issuer, session, viewer, error)
    return _mission_page(issuer, session, viewer, loaded, after,
                         notice=_notice(request), error=None, form_reason="")


def _unreadable(issuer: MissionIssuer, session: BrowserSession, viewer: User,
                error: MissionError) -> Response:
    """A stored Mission that cannot be read (decision V7): a 409 page for administrators,
    the 404 of an unknown Mission for everyone else."""
    if not viewer.is_admin:  # an unreadable row says nothing to whoever may not see it
        return _not_found(issuer, session, viewer)
    return _error(issuer, session, viewer, status_code=max(error.status, 400),
                  title="This Mission cannot be shown", description=error.description)


def _mission_page(issuer: MissionIssuer, session: BrowserSession, viewer: User,
                  loaded: Mapping[str, Any], after: int, *, status_code: int = 200,
                  **context: Any) -> Response:
    """The Mission page; a stored record the template cannot render (a member missing
    deeper than :func:`_check_disclosure` looks) is unreadable, never a 500."""
    try:
        return _page(issuer, session, viewer, "console/mission.html",
                     status_code=status_code, **context,
                     **_mission_context(issuer, viewer, loaded, after))
    except UndefinedError as error:
        why = error.message or "a member is missing"
        return _unreadable(issuer, session, viewer, InvalidState(
            f"the stored Mission record cannot be rendered: {why}"))


# The members of a stored consent disclosure the Mission page reads directly.
_DISCLOSURE_MEMBERS = ("rendered_at", "purpose", "authority", "bounds", "mission_expiry")


def _check_disclosure(disclosure: Any) -> None:
    """The stored consent disclosure has the shape the page renders (or there is none):
    else :class:`InvalidState`, which the page shows as unreadable (decision V7)."""
    if disclosure is None:
        return
    if not isinstance(disclosure, Mapping):
        raise InvalidState("the stored consent disclosure is not an object")
    missing = [name for name in _DISCLOSURE_MEMBERS if name not in disclosure]
    if missing:
        raise InvalidState("the stored consent disclosure lacks " + ", ".join(missing))
    expiry = disclosure["mission_expiry"]
    if (not isinstance(disclosure["rendered_at"], str)
            or not isinstance(disclosure["authority"], list)
            or not isinstance(expiry, Mapping) or not isinstance(expiry.get("granted"), str)):
        raise InvalidState("the stored consent disclosure is malformed")


@router.post("/console/missions/{mission_id}/lifecycle")
def console_lifecycle(mission_id: str, request: Request, issuer: Issuer, form: Form
                      ) -> Response:
    """Suspend, resume, revoke or complete, with a reason and an explicit confirmation.
    Signed in and the form's CSRF token here; then the one service for a signed-in person
    (:func:`person_changes_lifecycle`: the Mission visible to this person, else the same 404
    as an unknown one; the form; the lifecycle decision), which audits every refusal."""
    session = _browser_session(issuer, request)
    viewer = _viewer(issuer, session)
    if viewer is None:
        back = f"/console/missions/{mission_id}" if MISSION_ID.fullmatch(mission_id) \
            else "/console/"
        return _see_other("/login?next=" + quote(back, safe=""))
    try:
        check_csrf(session, form.get("csrf_token"))
    except MissionError as error:
        return _error(issuer, session, viewer, status_code=400,
                      title="The form could not be accepted", description=error.description)
    outcome = person_changes_lifecycle(issuer, viewer, PersonAsk(
        mission_id=mission_id, operation=form.get("operation"), reason=form.get("reason"),
        expected_version=form.get("expected_version") or None,
        confirmed=form.get("confirm") == "yes"))
    if outcome.hidden:
        return _not_found(issuer, session, viewer)
    refusal = outcome.refusal
    if refusal is not None:
        try:
            loaded = _load_visible(issuer, viewer, mission_id, 0)
        except _Hidden:
            return _not_found(issuer, session, viewer)
        except MissionError as error:
            return _unreadable(issuer, session, viewer, error)
        return _mission_page(issuer, session, viewer, loaded, 0,
                             status_code=max(refusal.status, 400), notice=None,
                             error=_error_words(refusal),
                             form_reason=form.get("reason", "")[:MAX_REASON_LENGTH * 2])
    assert outcome.operation is not None
    query = {"done": outcome.operation.value}
    if not outcome.changed:
        query["repeat"] = "1"
    return _see_other(f"/console/missions/{mission_id}?{urlencode(query)}")


def _error_words(error: MissionError) -> str:
    """The refusal as the person reads it; the service's own description follows."""
    if error.status == 403:
        return f"You may not do this: {error.description}."
    if error.error == "mission_concurrent_modification":
        return (f"The Mission changed or has ended: {error.description}. "
                "Review it below and try again if still needed.")
    if error.status == 409:
        return f"Not possible in the Mission's current state: {error.description}."
    return error.description[:1].upper() + error.description[1:] + "."


# --------------------------------------------------------------------------- sign out


@router.post("/console/sign-out")
def console_sign_out(request: Request, issuer: Issuer, form: Form) -> Response:
    session = _browser_session(issuer, request)
    try:
        check_csrf(session, form.get("csrf_token"))
    except MissionError as error:
        return _error(issuer, session, _viewer(issuer, session), status_code=400,
                      title="The form could not be accepted", description=error.description)
    # A new anonymous session: new CSRF token, nobody signed in.
    return _with_session(issuer, _see_other("/login?next=" + quote("/console/", safe="")),
                         new_browser_session(now=issuer.clock()))
