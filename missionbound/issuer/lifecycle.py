"""Changing a Mission's lifecycle on request (PROFILE.md sections 7 and 10, "Lifecycle").

:func:`change_lifecycle` is the one service function behind every way a person or a client
stops, pauses, resumes or closes a Mission: the lifecycle endpoint, the console and the CLI.
It checks the operation, lets the pure machine decide with the caller's roles
(``mission_access``) and applies the decision through the store, which writes the history
row, the audit record (with the acting party and the reason) and the outbox event in the
caller's transaction.

:func:`answer_lifecycle_request` is the endpoint ``POST /mission/lifecycle`` around it: who
is asking (``governance_callers``: ``private_key_jwt``, a DPoP-bound access token for its
own Mission, or a signed-in person's browser session with its CSRF token; never a client
secret), the ``nonce`` retry key (``store.lifecycle_requests``), and the signed status of
the Mission afterwards (``mission_status``). Everything one request writes commits in one
transaction; a refused request writes nothing but its refusal audit record (and an expiry
the clock had already made effective, which the store persists after the rollback).
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from missionbound.issuer.governance_callers import (
    BROWSER_SESSION,
    DPOP_BOUND_ACCESS_TOKEN,
    PRIVATE_KEY_JWT,
    BrowserCredentials,
    Caller,
    NotVisible,
    audit_refusal,
    authenticate,
    mission_parameter,
    nonce_parameter,
    run_governance,
    single_values,
)
from missionbound.issuer.mission_status import (
    current_state,
    sign_status,
    status_claims,
    status_response,
)
from missionbound.mission.canonical import digest_json
from missionbound.mission.errors import InvalidRequest, InvalidState, MissionError
from missionbound.mission.lifecycle import (
    DEFAULT_POLICY,
    LIFECYCLE_OPERATIONS,
    Event,
    LifecyclePolicy,
    Role,
    allowed_roles,
)
from missionbound.mission.record import MISSION_ID, MissionRecord
from missionbound.store import lifecycle_requests, missions
from missionbound.store.errors import MissionNotFound
from missionbound.store.lifecycle import (
    MAX_REASON_LENGTH,
    TransitionResult,
    settle_clock,
    transition,
)
from missionbound.store.mission_rows import lock_mission, to_record
from missionbound.store.models import Mission

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer, OAuthRequest, OAuthResponse
    from missionbound.tenant import User

log = structlog.get_logger("missionbound.lifecycle")

OPERATION_NAMES = tuple(event.value for event in LIFECYCLE_OPERATIONS)
MISSION_LIFECYCLE = "mission_lifecycle"
AUDIT_REFUSED = "lifecycle.refused"
VIA_ENDPOINT = "lifecycle_endpoint"
VIA_CONSOLE = "console"
# Issuance digest 8.2/8.3: no client secrets at the lifecycle endpoint.
LIFECYCLE_METHODS = frozenset({PRIVATE_KEY_JWT, DPOP_BOUND_ACCESS_TOKEN, BROWSER_SESSION})
# How long a nonce is remembered: at least the signed answer's lifetime (issuance digest
# 5.4), and never less than the longest a client assertion may live (client_auth.py), so a
# retransmit whose credentials are still good is still recognised.
MIN_NONCE_WINDOW = timedelta(minutes=10)
# Forgotten nonces are purged at most this often per process, after a committed request.
PURGE_INTERVAL = timedelta(seconds=60)
_EXPECTED_VERSION = re.compile(r"[0-9]{1,18}", re.ASCII)


@dataclass(frozen=True)
class LifecycleActor:
    """Who asks: the roles they hold on this Mission and how the audit log names them
    (for example ``{"user": "bob", "via": "console"}`` or
    ``{"client_id": "demo-agent", "auth": "private_key_jwt"}``)."""

    roles: frozenset[Role]
    trace: dict[str, Any] = field(default_factory=dict)


def parse_operation(value: Any) -> Event:
    """The ``operation`` form field: one of revoke, suspend, resume, complete."""
    if isinstance(value, str) and value in OPERATION_NAMES:
        return Event(value)
    raise InvalidRequest(f"operation must be one of {', '.join(OPERATION_NAMES)}")


def change_lifecycle(
    session: Session,
    mission_id: str,
    operation: Event | str,
    actor: LifecycleActor,
    *,
    reason: str | None,
    now: datetime,
    expected_version: int | None = None,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> TransitionResult:
    """Apply one lifecycle operation in the caller's transaction.

    Raises the core's typed errors (``TransitionForbidden`` when the actor's roles do not
    allow it, ``InvalidState``, ``ConcurrentModification``, ``MissionNotFound``,
    ``InvalidRequest``); each surface maps them to its own wire form. An idempotent repeat
    returns ``decision.changed`` False and writes nothing."""
    event = parse_operation(operation.value if isinstance(operation, Event) else operation)
    return transition(
        session,
        mission_id,
        event,
        roles=actor.roles,
        actor={"roles": sorted(role.value for role in actor.roles), **actor.trace},
        reason=reason,
        now=now,
        expected_version=expected_version,
        policy=policy,
    )


def check_reason(value: str | None, *, required: bool = False) -> str | None:
    """The ``reason`` of every surface (endpoint, console, CLI ``--reason``; decision G6):
    CRLF becomes LF, then at most 1024 characters of text, tabs and line breaks (no other
    C0 control, no DEL, no C1 control, no lone surrogate). Absent or empty means none, which
    ``required`` refuses (so does a reason of white space only)."""
    if value is None or value == "" or (required and not value.strip()):
        if required:
            raise InvalidRequest("give a reason: it is recorded with the change and sent to "
                                 "the Resource Servers")
        return None
    value = value.replace("\r\n", "\n")
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"reason must be at most {MAX_REASON_LENGTH} characters")
    if any(_refused_in_reason(char) for char in value):
        raise InvalidRequest("reason must hold text, new lines and tabs only: no control "
                             "characters")
    return value


def _refused_in_reason(char: str) -> bool:
    code = ord(char)
    return ((code < 0x20 and char not in "\t\n\r") or 0x7F <= code < 0xA0
            or 0xD800 <= code < 0xE000)


def parse_expected_version(value: str | None) -> int | None:
    """``expected_version`` on every surface (endpoint, console form, CLI
    ``--expected-version``; decision G6): absent means none, else 1 to 18 decimal digits."""
    if value is None:
        return None
    if not _EXPECTED_VERSION.fullmatch(value):
        raise InvalidRequest("expected_version must be a whole number (1 to 18 digits)")
    return int(value)


def locked_roles(session: Session, caller: Caller, mission_id: str
                 ) -> tuple[Mission, frozenset[Role]]:
    """Lock the Mission for a change and return its row with the roles ``caller`` holds on
    it now, in the writing transaction. :class:`NotVisible` (the 404 of an unknown Mission)
    when the caller holds none, may not address it, or it cannot be read;
    ``MissionNotFound`` when there is no such Mission."""
    if not caller.may_address(mission_id):
        raise NotVisible("other_mission")
    row = lock_mission(session, mission_id)
    try:
        record = to_record(row)
    except InvalidState:
        # Who holds which role cannot be read from an unreadable record: nobody does.
        raise NotVisible("unreadable_record") from None
    roles = caller.roles_on(record)
    if not roles:
        raise NotVisible("no_role")
    return row, roles


# -- a signed-in person (the console) ------------------------------------------------------


@dataclass(frozen=True)
class PersonAsk:
    """A signed-in person's lifecycle form as sent (the console's): raw values, checked by
    :func:`person_changes_lifecycle` with the endpoint's parsers."""

    mission_id: str
    operation: str | None
    reason: str | None
    expected_version: str | None
    confirmed: bool


@dataclass(frozen=True)
class PersonOutcome:
    """What became of a :class:`PersonAsk`: the Mission after a change (``changed`` False
    for an idempotent repeat), or the ``refusal``, already audited. ``hidden``: answer
    exactly as for an unknown Mission."""

    operation: Event | None
    record: MissionRecord | None = None
    changed: bool = False
    refusal: MissionError | None = None

    @property
    def hidden(self) -> bool:
        return isinstance(self.refusal, (NotVisible, MissionNotFound))


def person_changes_lifecycle(issuer: MissionIssuer, user: User, ask: PersonAsk, *,
                             via: str = VIA_CONSOLE) -> PersonOutcome:
    """A signed-in person (authenticated, CSRF checked by the caller) applies a lifecycle
    operation, in one transaction. Order (decision V5): the Mission visible to them (else
    the 404 of an unknown one), the form (operation, a reason, the confirmation,
    ``expected_version``), then :func:`change_lifecycle` with the roles they hold now
    (403 ``TransitionForbidden``, 409 for the state or a stale version). Every refusal is
    audited as at the endpoint (``lifecycle.refused``, decision G8), after the rollback,
    with the real cause; the actor is ``{"user": ..., "via": via}``."""
    now = issuer.clock()
    caller = Caller("user", user.username, BROWSER_SESSION, user=user)
    trace: dict[str, Any] = {"user": user.username, "via": via}
    refusal: dict[str, Any] = {"event": AUDIT_REFUSED, "actor": trace}
    operation: Event | None = None
    try:
        with issuer.store.begin() as session:
            if not MISSION_ID.fullmatch(ask.mission_id):
                raise NotVisible("malformed_mission_id")
            refusal["mission_id"] = ask.mission_id
            _, roles = locked_roles(session, caller, ask.mission_id)
            operation = parse_operation(ask.operation)
            refusal["data"] = {"operation": operation.value}
            reason = check_reason(ask.reason, required=True)
            if not ask.confirmed:
                raise InvalidRequest("tick “I understand” to confirm the change")
            expected_version = parse_expected_version(ask.expected_version)
            result = change_lifecycle(
                session, ask.mission_id, operation, LifecycleActor(roles, trace),
                reason=reason, now=now, expected_version=expected_version,
                policy=issuer.lifecycle_policy)
    except MissionError as error:
        # The record names the error as the person saw it (a 403 is a 403 here: they
        # see the Mission); a hidden Mission is the endpoint's not_found.
        audit_refusal(issuer, refusal, error, now,
                      shown=None if isinstance(error, (NotVisible, MissionNotFound))
                      else error.error)
        return PersonOutcome(operation, refusal=error)
    return PersonOutcome(operation, result.record, changed=result.decision.changed)


# -- the endpoint --------------------------------------------------------------------------


@dataclass(frozen=True)
class LifecycleAsk:
    """One lifecycle request's form."""

    mission_id: str
    operation: Event
    reason: str | None
    nonce: str
    expected_version: int | None

    def digest(self) -> str:
        """What a retransmit must repeat exactly (the nonce is its key)."""
        return digest_json({"operation": self.operation.value, "reason": self.reason,
                            "expected_version": self.expected_version})


def parse_lifecycle_form(request: OAuthRequest) -> LifecycleAsk:
    """``mission``, ``operation``, ``nonce`` (required), ``reason`` and ``expected_version``
    (optional), each at most once."""
    form = single_values(request)
    mission_id = mission_parameter(form)
    operation = parse_operation(form.get("operation"))
    nonce = nonce_parameter(form)
    reason = check_reason(form.get("reason"))
    expected_version = parse_expected_version(form.get("expected_version"))
    return LifecycleAsk(mission_id, operation, reason, nonce, expected_version)


@dataclass(frozen=True)
class LifecyclePlan:
    caller: Caller
    ask: LifecycleAsk
    record: MissionRecord
    changed: bool


def nonce_window(issuer: MissionIssuer) -> timedelta:
    return max(timedelta(seconds=issuer.settings.mission_status_lifetime_seconds),
               MIN_NONCE_WINDOW)


def apply_lifecycle_request(
    issuer: MissionIssuer, session: Session, caller: Caller, ask: LifecycleAsk, now: datetime
) -> LifecyclePlan:
    """The request of an authenticated ``caller``, in ``session``'s transaction.

    Order: who may ask (a caller holding no role that may do this operation gets
    :class:`NotVisible`, exactly like an unknown Mission), then the nonce (a retransmit
    answers the current state and applies nothing; the nonce of another request is
    ``invalid_request``), then the machine (idempotent repeat, ``expected_version``,
    terminal, legality)."""
    policy = issuer.lifecycle_policy
    row, roles = locked_roles(session, caller, ask.mission_id)
    if not roles & allowed_roles(ask.operation, policy):
        raise NotVisible("operation_not_allowed")
    seen = lifecycle_requests.remember(
        session, caller=caller.nonce_key, mission_id=ask.mission_id, nonce=ask.nonce,
        request_digest=ask.digest(), now=now, expires_at=now + nonce_window(issuer))
    if seen is lifecycle_requests.Seen.DIFFERENT:
        raise InvalidRequest("this nonce was already used for a different request: "
                             "send a new nonce with each request")
    if seen is lifecycle_requests.Seen.SAME:
        # A retransmit: its first attempt was applied. Answer what holds now.
        settle_clock(session, row, now=now, policy=policy)
        current = missions.get(session, ask.mission_id, with_history=False)
        assert current is not None
        return LifecyclePlan(caller, ask, current, changed=False)
    result = change_lifecycle(
        session, ask.mission_id, ask.operation,
        LifecycleActor(roles, caller.trace(VIA_ENDPOINT)),
        reason=ask.reason, now=now, expected_version=ask.expected_version, policy=policy)
    return LifecyclePlan(caller, ask, result.record, changed=result.decision.changed)


def answer_lifecycle_request(
    issuer: MissionIssuer, request: OAuthRequest, *, browser: BrowserCredentials | None
) -> OAuthResponse:
    """``POST /mission/lifecycle``, end to end: the signed status of the Mission afterwards,
    addressed to the acting party (``aud`` and ``sub``: its client id or ``user:<name>``)."""

    def handle(request: OAuthRequest) -> LifecyclePlan:
        session = request.session()
        caller = authenticate(issuer, request, session, methods=LIFECYCLE_METHODS,
                              endpoint=MISSION_LIFECYCLE, browser=browser)
        refusal: dict[str, Any] = {"event": AUDIT_REFUSED, "actor": caller.trace(VIA_ENDPOINT)}
        request.refusal = refusal
        ask = parse_lifecycle_form(request)
        refusal["mission_id"] = ask.mission_id
        refusal["data"] = {"operation": ask.operation.value}
        return apply_lifecycle_request(issuer, session, caller, ask, request.now)

    def finish(plan: LifecyclePlan) -> OAuthResponse:
        purge_now_and_then(issuer, request.now)
        claims = status_claims(
            issuer=issuer.issuer, record=plan.record,
            state=current_state(plan.record, request.now, issuer.lifecycle_policy),
            audience=plan.caller.label, subject=plan.caller.label, nonce=plan.ask.nonce,
            now=request.now,
            lifetime=timedelta(seconds=issuer.settings.mission_status_lifetime_seconds))
        return status_response(sign_status(request.pinned_signing_key(), claims))

    return run_governance(issuer, request, handle, finish)


_LAST_PURGE: weakref.WeakKeyDictionary[Any, datetime] = weakref.WeakKeyDictionary()
_PURGE_LOCK = threading.Lock()


def purge_now_and_then(issuer: MissionIssuer, now: datetime) -> int:
    """Forget nonces whose window has closed, at most every :data:`PURGE_INTERVAL` per
    process, in a transaction of its own (best effort: a failure is logged, the next
    request tries again). Returns how many rows went."""
    with _PURGE_LOCK:
        last = _LAST_PURGE.get(issuer)
        if last is not None and now - last < PURGE_INTERVAL:
            return 0
        _LAST_PURGE[issuer] = now
    try:
        with issuer.store.begin() as session:
            return lifecycle_requests.purge_expired(session, now)
    except SQLAlchemyError as error:
        log.warning("lifecycle nonce purge failed", error=type(error).__name__)
        return 0
