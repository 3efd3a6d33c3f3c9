"""The authorization endpoint for Mission requests (PROFILE.md section 5, RFC 9126 section 4).

``/authorize`` accepts only a pushed ``request_uri``; the Approver signs in, reads the
consent page rendered from the consent disclosure object, and approves or rejects. On
approve, one transaction computes the anchors, compiles the policy artifact (PROFILE.md
section 12: its digest becomes the Mission's ``policy_version``), moves the Mission
``pending_approval -> active`` (history, audit, outbox), stores the artifact, spends the
``request_uri`` and issues the code. The response carries ``iss`` (RFC 9207).

The consent page is rebuilt on submission rather than stored: the form carries the
disclosure's id and rendering instant under a MAC, and the same inputs give the same
disclosure object, hence the same ``consent_rendering_hash`` as the page that was shown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy.orm import Session

from missionbound.issuer.opaque import new_opaque_value, opaque_hash
from missionbound.mission.anchors import (
    Anchors,
    authority_hash,
    consent_rendering_hash,
    proposal_hash,
)
from missionbound.mission.consent import Party, build_consent_disclosure
from missionbound.mission.errors import ConcurrentModification, InvalidState, MissionError
from missionbound.mission.intent import validate_intent
from missionbound.mission.lifecycle import Event, Role
from missionbound.mission.record import MissionRecord, Principal, format_instant
from missionbound.protocol.tool_manifest import ToolDefinitionsUnavailable
from missionbound.runtime.approval import (
    ToolDefinitions,
    approve_with_policy,
    read_tool_definitions,
)
from missionbound.runtime.compiler import PolicyCompileError
from missionbound.store import missions
from missionbound.store.codes import save_authorization_code
from missionbound.store.lifecycle import transition
from missionbound.store.par import consume_pushed_request, get_pushed_request
from missionbound.tenant import User

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import MissionIssuer

# The acr a password sign-in meets (the demo catalog's lowest level).
PASSWORD_ACR = "urn:missionbound:acr:password"
CODE_LIFETIME = timedelta(seconds=60)


class AuthorizationPageError(MissionError):
    """An error shown on a page, never redirected: the client or its redirect URI cannot be
    trusted (RFC 6749 section 4.1.2.1)."""


class ApprovalFailed(Exception):
    """The approval could not be recorded; ``redirect`` tells the client so."""

    def __init__(self, redirect: Redirect) -> None:
        super().__init__(redirect.location)
        self.redirect = redirect


class ApproverNotAllowed(AuthorizationPageError):
    error = "access_denied"
    status = 403


@dataclass(frozen=True)
class Redirect:
    """An authorization response (success or error) to send the user agent to."""

    location: str


@dataclass(frozen=True)
class ConsentPage:
    disclosure: dict[str, object]
    hidden: dict[str, str]


@dataclass(frozen=True)
class _Pending:
    client: OAuthClient
    mission: MissionRecord
    params: Mapping[str, object]
    request_uri: str


def authorization_response(
    redirect_uri: str, params: Mapping[str, str | None], issuer: str
) -> Redirect:
    """``redirect_uri`` with ``params`` and RFC 9207 ``iss`` added to its query."""
    parts = urlsplit(redirect_uri)
    added = urlencode([(k, v) for k, v in {**params, "iss": issuer}.items() if v is not None])
    query = f"{parts.query}&{added}" if parts.query else added
    return Redirect(urlunsplit(parts._replace(query=query)))


def check_front_channel(query: Mapping[str, str]) -> None:
    """Refusals that need no pushed request: a Mission Intent on the front channel, or no
    ``request_uri`` at all (this AS requires PAR: ``require_pushed_authorization_requests``).

    Always a page, never a redirect: without a pushed request nothing vouches for the
    ``redirect_uri``, and anyone can register one through open registration; redirecting
    there would make this AS an open redirector (RFC 9700 section 4.11.2)."""
    if query.get("request_uri"):
        return
    if "mission_intent" in query:
        raise AuthorizationPageError(
            "mission_intent is accepted only in a pushed authorization request (PAR)")
    raise AuthorizationPageError(
        "this server requires pushed authorization requests: send client_id and request_uri")


def _load(issuer: MissionIssuer, session: Session, query: Mapping[str, str], now: datetime
          ) -> _Pending:
    client = issuer.clients.find(query.get("client_id"))
    if client is None:
        raise AuthorizationPageError("unknown client_id")
    request_uri = query.get("request_uri") or ""
    # Pushed parameters are authoritative; front-channel extras are ignored (issuance
    # digest 2.2), so nothing here can widen what was pushed.
    pushed = get_pushed_request(session, request_uri, client_id=client.client_id, now=now)
    # The consent page and the decision never read the lifecycle history.
    mission = (
        missions.get(session, pushed.mission_id, with_history=False)
        if pushed.mission_id
        else None
    )
    if mission is None:
        raise AuthorizationPageError("the pushed request has no Mission")
    return _Pending(client, mission, dict(pushed.params), request_uri)


def _subject(issuer: MissionIssuer, mission: MissionRecord, approver: User) -> Principal:
    """PROFILE.md section 5: the AS establishes the Subject: the user the client pushed the
    Mission for, else the signed-in Approver; the Approver must be allowed to approve for
    that Subject."""
    subject = mission.subject or Principal(issuer.issuer, approver.username)
    if subject.sub not in issuer.tenant.users:
        raise ApproverNotAllowed("the Mission's subject is not a user of this deployment")
    if not approver.may_approve_missions_of(subject.sub):
        raise ApproverNotAllowed(
            f"{approver.username} may not approve Missions for {subject.sub}"
        )
    return subject


def _party(issuer: MissionIssuer, principal: Principal) -> Party:
    user = issuer.tenant.users.get(principal.sub)
    return Party(principal, user.display_name if user else principal.sub)


def _disclosure(
    issuer: MissionIssuer,
    pending: _Pending,
    *,
    approver: User,
    subject: Principal,
    disclosure_id: str,
    rendered_at: datetime,
) -> dict[str, object]:
    mission = pending.mission
    catalog = issuer.tenant.catalog
    # Re-validating the stored intent gives the typed view the disclosure is built from; it
    # passed at PAR, and the check of mission_expiry uses the submission time.
    intent = validate_intent(
        _json_text(mission.mission_intent), catalog=catalog, now=mission.created_at,
        max_size=issuer.settings.mission_intent_max_size, client_purposes=None,
    )
    return build_consent_disclosure(
        disclosure_id=disclosure_id,
        intent=intent,
        authority_set=mission.authority_set,
        narrowing_decisions=mission.narrowing_decisions,
        mission_expiry=mission.mission_expiry,
        subject=_party(issuer, subject),
        approver=_party(issuer, Principal(issuer.issuer, approver.username)),
        client_id=pending.client.client_id,
        client_name=pending.client.client_name,
        catalog=catalog,
        proposal_hash=proposal_hash(
            issuer.issuer, mission.mission_intent, mission.authorization_details_requested
        ),
        authority_hash=authority_hash(issuer.issuer, mission.authority_set),
        rendered_at=rendered_at,
    )


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


class SignInAgain(AuthorizationPageError):
    """The Mission asks for a fresher sign-in than the Approver's (``aal.freshness_seconds``):
    the browser is sent to sign in again."""

    error = "login_required"


def _acr_meets(issuer: MissionIssuer, wanted: object) -> bool:
    """Whether a password sign-in (the only kind here: no MFA yet) meets ``wanted``."""
    if not isinstance(wanted, str):
        return False
    order = issuer.tenant.catalog.acr_order
    if wanted not in order or PASSWORD_ACR not in order:
        return wanted == PASSWORD_ACR
    return order.index(PASSWORD_ACR) >= order.index(wanted)


def _unmet_sign_in(issuer: MissionIssuer, mission: MissionRecord, auth_time: int | None,
                   now: datetime) -> str | None:
    """Section 5 and the ``aal`` constraint of section 6 ("AS at approval"): the Approver's
    sign-in must meet ``context.acr`` and every ``aal`` (Mission-wide or on an entry), and
    be no older than its ``freshness_seconds``. None when met; else why not. Raises
    :class:`SignInAgain` when only freshness fails."""
    context = mission.mission_intent.get("context") or {}
    levels: list[object] = []
    freshness: list[int] = []
    aals = [context.get("aal")] + [
        (entry.get("constraints") or {}).get("aal") for entry in mission.authority_set
    ]
    if "acr" in context:
        levels.append(context["acr"])
    for aal in aals:
        if isinstance(aal, dict):
            levels.append(aal.get("value"))
            if isinstance(aal.get("freshness_seconds"), int):
                freshness.append(aal["freshness_seconds"])
    if not all(_acr_meets(issuer, level) for level in levels):
        return "the approver's sign-in cannot meet the Mission's acr or aal"
    if freshness and (auth_time is None or now.timestamp() - auth_time > min(freshness)):
        raise SignInAgain("the Mission asks for a recent sign-in: sign in again")
    return None


def consent_page(
    issuer: MissionIssuer, session: Session, query: Mapping[str, str], approver: User,
    now: datetime, auth_time: int | None = None,
) -> ConsentPage | Redirect:
    pending = _load(issuer, session, query, now)
    unmet = _unmet_sign_in(issuer, pending.mission, auth_time, now)
    if unmet is not None:
        return authorization_response(
            str(pending.params["redirect_uri"]),
            {"error": "access_denied", "state": _state(pending), "error_description": unmet},
            issuer.issuer,
        )
    subject = _subject(issuer, pending.mission, approver)
    rendered_at = now.astimezone(UTC).replace(microsecond=0)
    disclosure_id = "dsc_" + new_opaque_value()
    disclosure = _disclosure(issuer, pending, approver=approver, subject=subject,
                             disclosure_id=disclosure_id, rendered_at=rendered_at)
    instant = format_instant(rendered_at)
    secret = issuer.secret("consent")
    hidden = {
        "client_id": pending.client.client_id,
        "request_uri": pending.request_uri,
        "disclosure_id": disclosure_id,
        "rendered_at": instant,
        "consent_mac": _mac(secret, pending.request_uri, disclosure_id, instant,
                            approver.username, subject.sub),
    }
    return ConsentPage(disclosure, hidden)


def decide(
    issuer: MissionIssuer, session: Session, form: Mapping[str, str], approver: User,
    now: datetime, auth_time: int | None = None,
) -> Redirect:
    """The Approver's decision, from the consent form."""
    decision = form.get("decision")
    if decision not in ("approve", "reject"):
        raise AuthorizationPageError("decision must be approve or reject")
    pending = _load(issuer, session, form, now)
    if decision == "approve":
        # Checked again at the decision: the page may have been open for a while.
        unmet = _unmet_sign_in(issuer, pending.mission, auth_time, now)
        if unmet is not None:
            raise ApproverNotAllowed(unmet)
    subject = _subject(issuer, pending.mission, approver)
    disclosure_id = form.get("disclosure_id") or ""
    instant = form.get("rendered_at") or ""
    secret = issuer.secret("consent")
    expected = _mac(secret, pending.request_uri, disclosure_id, instant, approver.username,
                    subject.sub)
    if not hmac.compare_digest(expected, form.get("consent_mac") or ""):
        raise AuthorizationPageError("the consent form was altered or is for another user")
    rendered_at = datetime.strptime(instant, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    if now - rendered_at > timedelta(seconds=issuer.settings.consent_window_seconds):
        raise AuthorizationPageError("the consent page is too old: reload it")
    redirect_uri = str(pending.params["redirect_uri"])
    tool_definitions = (_tool_definitions(issuer, pending, redirect_uri)
                        if decision == "approve" else {})
    consume_pushed_request(session, pending.request_uri, client_id=pending.client.client_id,
                           now=now)
    approver_principal = Principal(issuer.issuer, approver.username)
    actor = {"role": Role.APPROVER.value, **approver_principal.as_dict()}
    mission = pending.mission
    if decision == "reject":
        transition(session, mission.mission_id, Event.REJECT, roles={Role.APPROVER},
                   actor=actor, reason="rejected at consent", now=now,
                   policy=issuer.lifecycle_policy)
        return authorization_response(
            redirect_uri, {"error": "access_denied", "state": _state(pending),
                           "error_description": "the approver rejected the Mission"},
            issuer.issuer)
    disclosure = _disclosure(issuer, pending, approver=approver, subject=subject,
                             disclosure_id=disclosure_id, rendered_at=rendered_at)
    # The disclosure was just built from this Mission's proposal and Authority Set hashes
    # (its source_hashes, computed with this issuer's iss): reuse them, hash only the
    # disclosure. missions.approve recomputes all three from the stored record and refuses
    # any that does not match, so nothing here is trusted blindly.
    sources = disclosure["source_hashes"]
    assert isinstance(sources, dict)
    anchors = Anchors(
        proposal_hash=sources["proposal_hash"],
        consent_rendering_hash=consent_rendering_hash(issuer.issuer, disclosure),
        authority_hash=sources["authority_hash"],
    )
    try:
        approve_with_policy(
            session, mission, issuer.tenant.catalog, approver=approver_principal,
            subject=subject, approval_event_id=disclosure_id, anchors=anchors,
            consent_disclosure=disclosure, now=now,
            resource_policies=issuer.settings.pdp_resource_policies,
            lifecycle_policy=issuer.lifecycle_policy, tool_definitions=tool_definitions,
        )
    except PolicyCompileError as refused:
        # Fail closed: a Mission that does not compile is not approved, nothing written.
        raise ApprovalFailed(authorization_response(
            redirect_uri, {"error": "server_error", "state": _state(pending),
                           "error_description": "the Mission could not be compiled into "
                           "its policy artifact"},
            issuer.issuer)) from refused
    except (InvalidState, ConcurrentModification) as refused:
        # The Mission left pending_approval while the page was open (its consent window
        # lapsed, say): the client, whose redirect URI the pushed request vouches for,
        # hears access_denied (RFC 6749 section 4.1.2.1) once this transaction rolls back.
        raise ApprovalFailed(authorization_response(
            redirect_uri, {"error": "access_denied", "state": _state(pending),
                           "error_description": "the Mission can no longer be approved"},
            issuer.issuer)) from refused
    code = new_opaque_value()
    save_authorization_code(
        session,
        code_hash=opaque_hash(code),
        mission_id=mission.mission_id,
        client_id=pending.client.client_id,
        redirect_uri=redirect_uri,
        code_challenge=str(pending.params["code_challenge"]),
        dpop_jkt=_optional(pending.params.get("dpop_jkt")),
        expires_at=now + CODE_LIFETIME,
    )
    return authorization_response(redirect_uri, {"code": code, "state": _state(pending)},
                                  issuer.issuer)


def _tool_definitions(issuer: MissionIssuer, pending: _Pending,
                      redirect_uri: str) -> ToolDefinitions:
    """The granted tools' definitions (runtime-digest 5.8), read before this transaction
    writes anything, so a slow tool server holds no write lock (the remote source's read is
    bounded by its timeout). Unreadable: the approval fails closed, nothing written, and the
    client hears temporarily_unavailable (RFC 6749 section 4.1.2.1): approving again later
    may succeed, and the pushed request is still unspent."""
    try:
        return read_tool_definitions(issuer.tool_definitions, pending.mission.authority_set)
    except ToolDefinitionsUnavailable as unavailable:
        raise ApprovalFailed(authorization_response(
            redirect_uri, {"error": "temporarily_unavailable", "state": _state(pending),
                           "error_description": "the definitions of the Mission's tools "
                           "could not be read: try again later"},
            issuer.issuer)) from unavailable


def _state(pending: _Pending) -> str | None:
    return _optional(pending.params.get("state"))


def _optional(value: object) -> str | None:
    return value if isinstance(value, str) else None
