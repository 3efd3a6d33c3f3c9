"""Signed Mission Status (PROFILE.md section 10, issuance digest 8.2).

:func:`status_claims` and :func:`sign_status` build the one JWS both governance endpoints
answer with: ``/mission/status`` (for an audience, with that audience's authority projection)
and ``/mission/lifecycle`` (the state after the operation, addressed to the acting party).

The JWS: header ``{"alg", "typ": "mission-status-response+jwt", "kid"}``, signed with the
AS signing key (``/jwks``); payload ``iss``, ``aud``, ``sub``, ``nonce``, ``iat``, ``exp``
(``iat`` + ``mission_status_lifetime_seconds``), ``mission {id, origin}``, ``state`` (the
effective state: clock first), ``version``, ``proposal_hash``, ``authority_hash``,
``consent_rendering_hash``, ``policy_version``, ``mission_expiry`` (RFC 3339) and, at the
status endpoint, ``authority_projection``. An anchor a Mission does not have yet (pending,
rejected) is left out rather than sent as null.

:func:`answer_status_request` is the status endpoint itself: the caller authenticates like
an introspection caller (``client_secret_basic``, ``private_key_jwt``) or with a DPoP-bound
access token (then only for its own Mission), and is answered iff ``audience`` is one of the
Mission's resources it may see (``mission_access.visible_resources``); otherwise, and for an
unknown Mission, the same 404. A Mission the clock has expired but the store has not is
expired on the spot (its history, audit record and event), and the answer reports that
version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from missionbound.issuer.governance_callers import (
    CLIENT_SECRET_BASIC,
    DPOP_BOUND_ACCESS_TOKEN,
    PRIVATE_KEY_JWT,
    Caller,
    NotVisible,
    authenticate,
    mission_parameter,
    nonce_parameter,
    run_governance,
    single_values,
)
from missionbound.issuer.keys import SignerKey
from missionbound.issuer.mission_access import project_authority
from missionbound.issuer.server import OAuthResponse
from missionbound.mission.errors import InvalidRequest, InvalidState
from missionbound.mission.lifecycle import LifecyclePolicy, State, effective_state
from missionbound.mission.record import MissionRecord, Principal, format_instant
from missionbound.store.lifecycle import expire_if_due
from missionbound.store.mission_rows import MISSION_RECORD_COLUMNS, to_record
from missionbound.store.models import Mission

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer, OAuthRequest

MISSION_STATUS = "mission_status"
STATUS_TYPE = "mission-status-response+jwt"
STATUS_MEDIA_TYPE = f"application/{STATUS_TYPE}"
AUDIT_REFUSED = "mission_status.refused"
STATUS_METHODS = frozenset({CLIENT_SECRET_BASIC, PRIVATE_KEY_JWT, DPOP_BOUND_ACCESS_TOKEN})
MAX_AUDIENCE_LENGTH = 2048
_ANCHORS = ("proposal_hash", "authority_hash", "consent_rendering_hash")


# -- the signed status ---------------------------------------------------------------------


def status_claims(
    *,
    issuer: str,
    record: MissionRecord,
    state: State,
    audience: str,
    subject: str,
    nonce: str,
    now: datetime,
    lifetime: timedelta,
    projection: list[Any] | None = None,
) -> dict[str, Any]:
    """The payload of a Mission Status response for ``record`` in effective ``state``."""
    issued_at = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "nonce": nonce,
        "iat": issued_at,
        "exp": issued_at + int(lifetime.total_seconds()),
        "mission": {"id": record.mission_id, "origin": record.origin},
        "state": state.value,
        "version": record.version,
    }
    for name in _ANCHORS:
        value = getattr(record, name)
        if value is not None:
            claims[name] = value
    claims["policy_version"] = record.policy_version
    claims["mission_expiry"] = format_instant(record.mission_expiry)
    if projection is not None:
        claims["authority_projection"] = projection
    return claims


def sign_status(signer: SignerKey, claims: dict[str, Any]) -> str:
    """The compact JWS of ``claims``, typed ``mission-status-response+jwt``."""
    header = signer.protected_header(typ=STATUS_TYPE)
    return jwt.encode(header, claims, signer.key, registry=signer.registry)


def status_response(signed: str) -> OAuthResponse:
    """HTTP 200 with the JWS (``Cache-Control: no-store``: it answers one nonce)."""
    return OAuthResponse(200, signed, [("Content-Type", STATUS_MEDIA_TYPE),
                                       ("Cache-Control", "no-store")])


def current_state(record: MissionRecord, now: datetime, policy: LifecyclePolicy) -> State:
    """Clock first (PROFILE.md section 7)."""
    return effective_state(record.state, now=now, mission_expiry=record.mission_expiry,
                           created_at=record.created_at, policy=policy)


# -- the status endpoint -------------------------------------------------------------------


@dataclass(frozen=True)
class StatusAsk:
    mission_id: str
    audience: str
    nonce: str


@dataclass(frozen=True)
class StatusPlan:
    """What the transaction found: the caller may see ``record`` for the audience asked."""

    caller: Caller
    ask: StatusAsk
    record: MissionRecord
    expiry_due: bool


def parse_status_form(request: OAuthRequest) -> StatusAsk:
    """``mission``, ``audience`` and ``nonce``, all required, each once."""
    form = single_values(request)
    mission_id = mission_parameter(form)
    audience = form.get("audience")
    if not audience or len(audience) > MAX_AUDIENCE_LENGTH:
        raise InvalidRequest(f"audience is required (at most {MAX_AUDIENCE_LENGTH} characters)")
    nonce = nonce_parameter(form)
    return StatusAsk(mission_id, audience, nonce)


_MISSION = select(*MISSION_RECORD_COLUMNS).where(Mission.mission_id == bindparam("mission_id"))


@dataclass(frozen=True)
class _DecoyRow:
    """Stands in for a Mission that does not exist, so that an unknown id costs about what a
    known one the caller may not see costs: a record is built and the visibility rule runs."""

    mission_id: str
    state: str
    version: int
    record: dict[str, Any]
    client_id: str
    created_at: datetime
    mission_expiry: datetime
    approval_event_id: str | None = None
    activated_at: datetime | None = None


def _decoy(mission_id: str, now: datetime) -> _DecoyRow:
    record = {"origin": "", "mission_intent": {}, "authority_set": [], "policy_version": "",
              "subject": Principal(iss="", sub="").as_dict()}
    return _DecoyRow(mission_id, State.ACTIVE.value, 1, record, "", now, now)


def load_visible(session: Session, caller: Caller, ask: StatusAsk, now: datetime
                 ) -> MissionRecord:
    """The Mission, if ``caller`` may see it for ``ask.audience``; else :class:`NotVisible`
    (an unknown Mission, an unreadable record and another Mission's token included)."""
    row = session.connection().execute(_MISSION, {"mission_id": ask.mission_id}).first()
    try:
        record: MissionRecord | None = to_record(
            row if row is not None else _decoy(ask.mission_id, now))
    except InvalidState:
        # An unreadable record or unknown state permits nothing and says nothing (fail
        # closed): there is no trustworthy state to report.
        record = None
    visible = caller.visible_resources(record) if record is not None else frozenset()
    if row is None or record is None or ask.audience not in visible:
        raise NotVisible("not_visible")
    return record


def answer_status_request(issuer: MissionIssuer, request: OAuthRequest) -> OAuthResponse:
    """``POST /mission/status``, end to end."""
    # A token-authenticated request spends its DPoP proof's jti: a write transaction. The
    # others only read (on SQLite they do not queue for the write lock).
    scheme = request.headers.get("authorization", "").strip().partition(" ")[0].lower()
    policy = issuer.lifecycle_policy

    def handle(request: OAuthRequest) -> StatusPlan:
        session = request.session()
        caller = authenticate(issuer, request, session, methods=STATUS_METHODS,
                              endpoint=MISSION_STATUS)
        # A malformed request of an authenticated caller is evidence (decision O9); an
        # answer, a 404 included, is not a refusal and writes nothing.
        request.refusal = {"event": AUDIT_REFUSED, "actor": caller.trace("mission_status")}
        ask = parse_status_form(request)
        request.refusal = None
        record = load_visible(session, caller, ask, request.now)
        due = current_state(record, request.now, policy) is not record.state
        return StatusPlan(caller, ask, record, due)

    def finish(plan: StatusPlan) -> OAuthResponse:
        record = plan.record
        if plan.expiry_due:
            # Lazy expiry (section 7): persist what the clock already decided, with its
            # event, and answer with the version that carries it.
            with issuer.store.begin() as session:
                expire_if_due(session, record.mission_id, now=request.now, policy=policy)
                row = session.connection().execute(
                    _MISSION, {"mission_id": record.mission_id}).first()
                assert row is not None
                record = to_record(row)
        claims = status_claims(
            issuer=issuer.issuer, record=record, state=current_state(record, request.now, policy),
            audience=plan.ask.audience, subject=plan.caller.name, nonce=plan.ask.nonce,
            now=request.now,
            lifetime=timedelta(seconds=issuer.settings.mission_status_lifetime_seconds),
            projection=project_authority(record, [plan.ask.audience]))
        return status_response(sign_status(request.pinned_signing_key(), claims))

    return run_governance(issuer, request, handle, finish, read_only=scheme != "dpop",
                          basic_realm=issuer.issuer)
