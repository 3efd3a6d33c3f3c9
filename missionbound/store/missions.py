"""The Mission repository: create at PAR, read, list, approve (PROFILE.md sections 5 and 7).

Transitions after approval are :func:`missionbound.store.lifecycle.transition` (re-exported
here with the expiry sweep); the derivation gate is
:func:`missionbound.store.gate.gate_derivation`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from missionbound.mission.anchors import Anchors, compute_anchors
from missionbound.mission.canonical import canonicalize
from missionbound.mission.errors import ConcurrentModification, InvalidRequest
from missionbound.mission.lifecycle import (
    DEFAULT_POLICY,
    Event,
    LifecyclePolicy,
    Role,
    State,
    TransitionDecision,
    decide_transition,
    parse_state,
)
from missionbound.mission.record import (
    MISSION_ID,
    MissionRecord,
    Principal,
    check_mission_id,
    format_instant,
)
from missionbound.store.errors import MissionRecordTampered
from missionbound.store.lifecycle import (
    AUDIT_CREATED,
    TransitionResult,
    check_record_committed,
    check_trace_inputs,
    commit_transition,
    expire_due,
    expire_if_due,
    settle_clock,
    transition,
    write_lifecycle_traces,
)
from missionbound.store.mission_rows import (
    load_history,
    lock_mission,
    record_json,
    to_record,
)
from missionbound.store.models import DerivationCounter, Mission, MissionHistory
from missionbound.store.validation import require_aware

__all__ = [
    "AUDIT_CREATED",
    "MissionRecordTampered",
    "TransitionResult",
    "approve",
    "create_pending",
    "derivation_count",
    "expire_due",
    "expire_if_due",
    "get",
    "list_missions",
    "transition",
]

SUBMIT_EVENT = "submit"
MAX_LIST_LIMIT = 1000
_APPROVAL_MEMBERS = (
    "approver",
    "proposal_hash",
    "consent_rendering_hash",
    "authority_hash",
    "consent_disclosure",
    "approval_event_id",
    "activated_at",
)


def create_pending(
    session: Session, record: MissionRecord, actor: dict[str, Any] | None, now: datetime
) -> MissionRecord:
    """Store a Mission accepted at PAR: ``pending_approval``, version 1, with its ``submit``
    history row, ``mission.created`` audit record and lifecycle outbox event.

    The record must be new: state ``pending_approval``, version 1, no approval members, a
    valid id, aware times with ``mission_expiry`` after ``created_at``; anything else is an
    :class:`InvalidRequest` and nothing is written.
    """
    _check_new_record(record)
    check_trace_inputs(actor, None, now)
    if session.get(Mission, record.mission_id) is not None:
        raise InvalidRequest("a Mission with this id already exists")
    row = Mission(
        mission_id=record.mission_id,
        state=State.PENDING_APPROVAL.value,
        version=1,
        record=record_json(record),
        subject_sub=record.subject.sub if record.subject else None,
        client_id=record.client_id,
        created_at=record.created_at,
        mission_expiry=record.mission_expiry,
        activated_at=None,
        approval_event_id=None,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent create with the same id won; ids are random, so this is a replay.
        raise InvalidRequest("a Mission with this id already exists") from None
    session.add(DerivationCounter(mission_id=record.mission_id, count=0))
    session.add(
        MissionHistory(
            mission_id=record.mission_id,
            version=1,
            from_state=None,
            to_state=State.PENDING_APPROVAL.value,
            event=SUBMIT_EVENT,
            actor=actor,
            reason=None,
            committed_at=now,
        )
    )
    write_lifecycle_traces(
        session,
        record.mission_id,
        row.record,
        event=SUBMIT_EVENT,
        prior_state=None,
        state=State.PENDING_APPROVAL.value,
        version=1,
        actor=actor,
        reason=None,
        now=now,
        audit_event=AUDIT_CREATED,
    )
    return to_record(row, load_history(session, [record.mission_id])[record.mission_id])


def get(session: Session, mission_id: str, *, with_history: bool = True) -> MissionRecord | None:
    """The stored record with its lifecycle history, or ``None``. The state is the stored
    one: apply :func:`missionbound.mission.lifecycle.effective_state` before trusting it.
    ``with_history=False`` leaves ``lifecycle_history`` empty and spares its query, for
    callers that never read it."""
    check_mission_id(mission_id)
    row = session.get(Mission, mission_id, populate_existing=True)
    if row is None:
        return None
    if not with_history:
        return to_record(row)
    return to_record(row, load_history(session, [mission_id])[mission_id])


def mission_exists(session: Session, mission_id: Any) -> bool:
    """Whether ``mission_id`` names a stored Mission (False for anything malformed)."""
    if not isinstance(mission_id, str) or not MISSION_ID.fullmatch(mission_id):
        return False
    return session.get(Mission, mission_id) is not None


def list_missions(
    session: Session,
    state: State | str | None = None,
    subject: str | None = None,
    client_id: str | None = None,
    limit: int = 100,
) -> list[MissionRecord]:
    """Missions filtered by stored state, subject ``sub`` and client, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    statement = select(Mission)
    if state is not None:
        try:
            statement = statement.where(Mission.state == State(state).value)
        except ValueError:
            raise InvalidRequest(f"unknown Mission state {state!r}") from None
    if subject is not None:
        statement = statement.where(Mission.subject_sub == subject)
    if client_id is not None:
        statement = statement.where(Mission.client_id == client_id)
    statement = statement.order_by(Mission.created_at.desc(), Mission.mission_id).limit(limit)
    rows = list(session.scalars(statement))
    histories = load_history(session, [row.mission_id for row in rows])
    return [to_record(row, histories[row.mission_id]) for row in rows]


def derivation_count(session: Session, mission_id: str) -> int:
    """How many derivations the gate has let through for this Mission."""
    count = session.scalar(
        select(DerivationCounter.count).where(DerivationCounter.mission_id == mission_id)
    )
    return count or 0


def approve(
    session: Session,
    mission_id: str,
    *,
    approver: Principal,
    approval_event_id: str,
    anchors: Anchors | Mapping[str, str],
    consent_disclosure: dict[str, Any],
    authority_set: list[Any],
    policy_version: str,
    now: datetime,
    subject: Principal | None = None,
    reason: str | None = None,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> TransitionResult:
    """Section 5, on approve: fill the approval members once and move ``pending_approval ->
    active`` through the lifecycle (history, audit with the anchors, outbox), in the
    caller's transaction (which also issues the code).

    ``authority_set`` must equal the Authority Set derived at PAR and stored in the pending
    record (``record.authority_set``, compared as canonical JSON): the Approver grants what
    the consent page showed, or rejects. Approver-side narrowing (granting a subset) is not
    supported yet; any other set is an :class:`InvalidRequest` and nothing is written.

    ``consent_disclosure`` must be the disclosure rendered for this approval (the shape of
    :func:`missionbound.mission.consent.build_consent_disclosure`): a JSON object whose
    ``source_hashes`` are exactly the ``proposal_hash`` and ``authority_hash`` computed here,
    whose ``approver`` names ``approver`` and whose ``subject`` names the stored subject
    (``iss`` and ``sub``); anything else is an :class:`InvalidRequest`, nothing written.

    ``subject`` is the Subject the AS established at approval, for a Mission pushed without
    one (decision O2); for a Mission that names its Subject it may be omitted or must be
    that Subject. Whether the Approver may approve for the Subject is the issuer's policy
    check, made before this call.

    Idempotent on ``approval_event_id``: replaying the same approval returns the Mission
    unchanged and writes nothing. A different approval of an already approved Mission is a
    409 :class:`ConcurrentModification`; an ``approval_event_id`` already used by another
    Mission, an ``authority_set`` other than the derived one, a disclosure of another
    approval, or ``anchors`` that do not commit to the given members, an
    :class:`InvalidRequest`. A pending record that is not the one its ``mission.created``
    audit record committed to is refused with :class:`MissionRecordTampered` (409).
    """
    check_mission_id(mission_id)
    _check_approval_inputs(
        approver, approval_event_id, consent_disclosure, authority_set, policy_version
    )
    if subject is not None and not isinstance(subject, Principal):
        raise InvalidRequest("subject must be a Principal")
    check_trace_inputs(approver.as_dict(), reason, now)
    claimed = session.scalar(
        select(Mission.mission_id).where(Mission.approval_event_id == approval_event_id)
    )
    if claimed is not None and claimed != mission_id:
        raise InvalidRequest("this approval event already approved another Mission")
    row = lock_mission(session, mission_id)
    if row.approval_event_id is not None:
        if row.approval_event_id != approval_event_id:
            raise ConcurrentModification("the Mission was already approved by another event")
        state = parse_state(row.state)
        replay = TransitionDecision(Event.APPROVE, state, state, row.version, row.version)
        history = load_history(session, [mission_id])[mission_id]
        return TransitionResult(to_record(row, history), replay)
    clock_expiry = settle_clock(session, row, now=now, policy=policy)
    decision = decide_transition(
        parse_state(row.state), row.version, Event.APPROVE, {Role.APPROVER}, policy=policy
    )
    if decision.changed:
        # A pending record rewritten behind the AS's back is refused before it is read.
        committed_digest = check_record_committed(session, mission_id, row.record, Event.APPROVE)
        members = _approval_members(
            row.record,
            approver=approver,
            subject=subject,
            approval_event_id=approval_event_id,
            anchors=anchors,
            consent_disclosure=consent_disclosure,
            authority_set=authority_set,
            policy_version=policy_version,
            now=now,
        )
        try:
            commit_transition(
                session,
                row,
                decision,
                actor={"role": Role.APPROVER.value, **approver.as_dict()},
                reason=reason,
                now=now,
                column_updates={
                    "record": {**row.record, **members},
                    "subject_sub": members["subject"]["sub"],
                    "activated_at": now,
                    "approval_event_id": approval_event_id,
                },
                # Checked just above, on this row.record, under this lock.
                committed_digest=committed_digest,
            )
        except IntegrityError:
            # Same approval event id, another Mission, committed concurrently.
            raise InvalidRequest("this approval event already approved another Mission") from None
    history = load_history(session, [mission_id])[mission_id]
    return TransitionResult(to_record(row, history), decision, clock_expiry)


def _approval_members(
    stored: dict[str, Any],
    *,
    approver: Principal,
    subject: Principal | None,
    approval_event_id: str,
    anchors: Anchors | Mapping[str, str],
    consent_disclosure: dict[str, Any],
    authority_set: list[Any],
    policy_version: str,
    now: datetime,
) -> dict[str, Any]:
    """The members approval fills, after checking that the approved Authority Set is the
    one derived at PAR and that the anchors commit to them: the store never keeps an
    anchor an auditor could not recompute (section 5)."""
    _check_derived_authority(stored, authority_set)
    established = _established_subject(stored.get("subject"), subject)
    given = anchors.as_dict() if isinstance(anchors, Anchors) else dict(anchors)
    expected = compute_anchors(
        stored["origin"],
        mission_intent=stored["mission_intent"],
        authorization_details_requested=stored.get("authorization_details_requested"),
        consent_disclosure=consent_disclosure,
        authority_set=authority_set,
    ).as_dict()
    _check_disclosure(
        consent_disclosure,
        proposal_hash=expected["proposal_hash"],
        authority_hash=expected["authority_hash"],
        approver=approver,
        subject=established,
    )
    for name, value in expected.items():
        if given.get(name) != value:
            raise InvalidRequest(f"{name} does not commit to the approved members")
    if set(given) - set(expected):
        raise InvalidRequest("unknown anchor name")
    return {
        "subject": established,
        "approver": approver.as_dict(),
        **expected,
        # Copies: the caller's objects must not alias what the session will write.
        "consent_disclosure": copy.deepcopy(consent_disclosure),
        "authority_set": copy.deepcopy(authority_set),
        "policy_version": policy_version,
        "approval_event_id": approval_event_id,
        "activated_at": format_instant(now),
    }


def _established_subject(stored: Any, given: Principal | None) -> dict[str, str]:
    """The Subject the approved Mission records: the one pushed at PAR, or the one the AS
    established at approval when none was pushed; never two different ones."""
    if stored is None:
        if given is None:
            raise InvalidRequest("the Mission has no Subject yet: approval must establish one")
        return given.as_dict()
    if not isinstance(stored, dict) or not all(
        isinstance(stored.get(name), str) for name in ("iss", "sub")
    ):
        raise InvalidRequest("the stored subject is not an {iss, sub} object")
    principal = {"iss": stored["iss"], "sub": stored["sub"]}
    if given is not None and given.as_dict() != principal:
        raise InvalidRequest("subject differs from the Subject the Mission was pushed for")
    return principal


def _check_disclosure(
    disclosure: dict[str, Any],
    *,
    proposal_hash: str,
    authority_hash: str,
    approver: Principal,
    subject: dict[str, str],
) -> None:
    """The consent disclosure (``mission/consent.py``, ``build_consent_disclosure``) is what
    ``consent_rendering_hash`` anchors: it must be the page rendered for this Mission and
    this approval. Its ``source_hashes`` must name the proposal and Authority Set being
    approved, its ``approver`` the Approver approving, its ``subject`` the stored subject."""
    sources = {"proposal_hash": proposal_hash, "authority_hash": authority_hash}
    if disclosure.get("source_hashes") != sources:
        raise InvalidRequest(
            "consent_disclosure.source_hashes must be the proposal_hash and authority_hash "
            "of the Mission being approved"
        )
    for member, principal in (
        ("approver", approver.as_dict()),
        ("subject", subject),
    ):
        shown = disclosure.get(member)
        if not isinstance(shown, dict) or any(
            shown.get(name) != value for name, value in principal.items()
        ):
            raise InvalidRequest(
                f"consent_disclosure.{member} must name the Mission's {member} (iss and sub)"
            )


def _check_derived_authority(stored: dict[str, Any], authority_set: list[Any]) -> None:
    """Approver-side narrowing is not supported yet: the approved set must be exactly the
    derived one. Compared canonically (RFC 8785), so ``1`` never passes for ``true``."""
    derived = stored.get("authority_set")
    if not isinstance(derived, list) or canonicalize(authority_set) != canonicalize(derived):
        raise InvalidRequest(
            "authority_set must equal the Authority Set derived at PAR "
            "(approver-side narrowing is not supported)"
        )


def _check_approval_inputs(
    approver: Principal,
    approval_event_id: str,
    consent_disclosure: dict[str, Any],
    authority_set: list[Any],
    policy_version: str,
) -> None:
    if not isinstance(approver, Principal):
        raise InvalidRequest("approver must be a Principal")
    if not isinstance(approval_event_id, str) or not 0 < len(approval_event_id) <= 255:
        raise InvalidRequest("approval_event_id must be a string of 1 to 255 characters")
    if not isinstance(consent_disclosure, dict):
        raise InvalidRequest("consent_disclosure must be a JSON object")
    if not isinstance(authority_set, list):
        raise InvalidRequest("authority_set must be a JSON array")
    if not isinstance(policy_version, str) or not policy_version:
        raise InvalidRequest("policy_version must be a non-empty string")


def _check_new_record(record: MissionRecord) -> None:
    if not isinstance(record, MissionRecord):
        raise InvalidRequest("expected a MissionRecord")
    check_mission_id(record.mission_id)
    if record.state is not State.PENDING_APPROVAL or record.version != 1:
        raise InvalidRequest("a new Mission is pending_approval at version 1")
    filled = [name for name in _APPROVAL_MEMBERS if getattr(record, name) is not None]
    if filled:
        raise InvalidRequest(f"approval members are set at approval, not at PAR: {filled}")
    require_aware(record.created_at, "created_at")
    require_aware(record.mission_expiry, "mission_expiry")
    if record.mission_expiry <= record.created_at:
        raise InvalidRequest("mission_expiry must be after created_at")
    if record.subject is not None and not isinstance(record.subject, Principal):
        raise InvalidRequest("subject must be a Principal or None")
    if (record.subject is not None and len(record.subject.sub) > 255) or len(
        record.client_id
    ) > 255:
        raise InvalidRequest("subject and client_id are limited to 255 characters")
