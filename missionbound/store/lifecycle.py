"""Applying the seven-state lifecycle (PROFILE.md section 7) to stored Missions.

The pure machine (:mod:`missionbound.mission.lifecycle`) decides; this module reads and
locks the row, lets the clock speak first, applies the decision with an optimistic version
check and writes, in the caller's transaction, the three traces every committed transition
leaves: a ``mission_history`` row, an audit record (section 15) and one outbox event of
topic ``mission.lifecycle`` (section 10, "Signals"), and announces the new version to every
process serving the database (:mod:`missionbound.store.change_feed`). An idempotent repeat
writes nothing.

Before writing, the stored record is compared with the ``record_digest`` of the Mission's
last lifecycle audit record: a record rewritten behind the AS's back is refused
(:class:`MissionRecordTampered`), never re-committed to the log by the next event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.mission.canonical import digest_json
from missionbound.mission.errors import ConcurrentModification, InvalidRequest
from missionbound.mission.lifecycle import (
    DEFAULT_POLICY,
    TERMINAL_STATES,
    Event,
    LifecyclePolicy,
    Role,
    State,
    TransitionDecision,
    decide_transition,
    effective_state,
    parse_state,
)
from missionbound.mission.record import MissionRecord, check_mission_id, format_instant
from missionbound.store import change_feed, outbox
from missionbound.store.errors import MissionRecordTampered
from missionbound.store.mission_rows import (
    anchors_of,
    load_history,
    lock_mission,
    to_record,
)
from missionbound.store.models import AuditRecord, Mission, MissionHistory
from missionbound.store.transactions import run_after_rollback
from missionbound.store.validation import require_aware

AUDIT_CREATED = "mission.created"
AUDIT_TRANSITION = "mission.transition"
# The audit events that record a lifecycle event (``data`` carries ``state``, ``version``
# and ``record_digest``); ``audit verify`` reads the same two names.
LIFECYCLE_AUDIT_EVENTS = (AUDIT_CREATED, AUDIT_TRANSITION)
CLOCK_ACTOR: dict[str, Any] = {"role": Role.CLOCK.value}
MAX_REASON_LENGTH = 1024  # issuance digest, lifecycle endpoint: "reason <= 1024 chars"
_LIVE_STATES = [s.value for s in State if s not in TERMINAL_STATES]


@dataclass(frozen=True)
class TransitionResult:
    """The Mission after the call and what was decided. ``decision.changed`` is False for an
    idempotent repeat. ``clock_expiry`` is set when the call first persisted an expiry the
    clock had already made effective."""

    record: MissionRecord
    decision: TransitionDecision
    clock_expiry: TransitionDecision | None = None


def transition(
    session: Session,
    mission_id: str,
    event: Event | str,
    *,
    roles: Iterable[Role | str],
    actor: dict[str, Any] | None,
    reason: str | None,
    now: datetime,
    expected_version: int | None = None,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> TransitionResult:
    """Apply ``event`` to the Mission for a principal holding ``roles``.

    Raises the core's typed errors: :class:`TransitionForbidden` (403),
    :class:`ConcurrentModification` (409: terminal Mission, stale ``expected_version``, or a
    writer that got there first), :class:`InvalidState` (409: illegal from this state), plus
    :class:`MissionNotFound` and :class:`InvalidRequest` for bad input. Nothing is written
    when it raises, except a due expiry, which :meth:`Store.begin` persists after the
    rollback.
    """
    check_mission_id(mission_id)
    checked_event = _check_event(event)
    if checked_event is Event.APPROVE:
        # An approval must record who approved and the three anchors (section 5).
        raise InvalidRequest("approval goes through missions.approve, which records the anchors")
    checked_roles = _check_roles(roles)
    check_trace_inputs(actor, reason, now)
    if expected_version is not None and (
        isinstance(expected_version, bool) or not isinstance(expected_version, int)
    ):
        raise InvalidRequest("expected_version must be an integer")
    row = lock_mission(session, mission_id)
    clock_expiry = settle_clock(session, row, now=now, policy=policy)
    decision = decide_transition(
        parse_state(row.state),
        row.version,
        checked_event,
        checked_roles,
        expected_version=expected_version,
        policy=policy,
    )
    if decision.changed:
        commit_transition(session, row, decision, actor=actor, reason=reason, now=now)
    history = load_history(session, [mission_id])[mission_id]
    return TransitionResult(to_record(row, history), decision, clock_expiry)


def settle_clock(
    session: Session,
    row: Mission,
    *,
    now: datetime,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> TransitionDecision | None:
    """Clock first (section 7): if the Mission is past ``mission_expiry`` (or pending past
    the consent window) but not stored ``expired``, persist the expiry now, with its own
    history, audit and outbox rows. ``row`` must be locked. Returns the expiry applied."""
    stored = parse_state(row.state)
    effective = effective_state(
        stored,
        now=now,
        mission_expiry=row.mission_expiry,
        created_at=row.created_at,
        policy=policy,
    )
    if effective is stored:
        return None
    decision = decide_transition(stored, row.version, Event.EXPIRE, {Role.CLOCK}, policy=policy)
    mission_id = row.mission_id
    # If the caller's transaction is rolled back (its own event refused on the now expired
    # Mission), persist the expiry anyway, on its own.
    run_after_rollback(
        session,
        f"expire:{mission_id}",
        lambda fresh: expire_if_due(fresh, mission_id, now=now, policy=policy),
    )
    reason = (
        "mission_expiry passed"
        if now >= row.mission_expiry
        else "consent window lapsed without approval"
    )
    commit_transition(session, row, decision, actor=CLOCK_ACTOR, reason=reason, now=now)
    return decision


def expire_if_due(
    session: Session,
    mission_id: str,
    *,
    now: datetime,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> TransitionDecision | None:
    """Persist this Mission's expiry if the clock has made it effective; else do nothing."""
    return settle_clock(session, lock_mission(session, mission_id), now=now, policy=policy)


def due_for_expiry(now: datetime, policy: LifecyclePolicy = DEFAULT_POLICY) -> ColumnElement[bool]:
    """The SQL condition of a Mission the clock has expired but the store has not (section 7):
    live past ``mission_expiry``, or pending past the consent window. Candidates only:
    :func:`expire_if_due` decides under the row lock."""
    return or_(
        and_(Mission.state.in_(_LIVE_STATES), Mission.mission_expiry <= now),
        and_(
            Mission.state == State.PENDING_APPROVAL.value,
            Mission.created_at <= now - policy.consent_window,
        ),
    )


def expire_due(
    session: Session,
    now: datetime,
    *,
    policy: LifecyclePolicy = DEFAULT_POLICY,
    limit: int | None = None,
) -> int:
    """Expire every due Mission (at most ``limit``) in the caller's one transaction, with
    its events; returns how many moved. For tests, scripts and maintenance work that want
    the whole batch to commit or roll back together: one Mission whose expiry cannot be
    written (a tampered record) fails the whole call. The serving sweep is
    :mod:`missionbound.web.expiry_sweep`, which expires each Mission in its own transaction
    instead. Missions another transaction holds are skipped (PostgreSQL ``SKIP LOCKED``):
    that transaction settles the clock itself, or a later sweep does."""
    require_aware(now, "now")
    due = due_for_expiry(now, policy)
    # Lock every due row up front, before the first audit append takes the chain head:
    # taking Mission locks after the head could deadlock with a derivation in flight.
    mission_ids = session.scalars(
        select(Mission.mission_id)
        .where(due)
        .order_by(Mission.mission_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    moved = 0
    for mission_id in mission_ids:
        if expire_if_due(session, mission_id, now=now, policy=policy) is not None:
            moved += 1
    return moved


def commit_transition(
    session: Session,
    row: Mission,
    decision: TransitionDecision,
    *,
    actor: dict[str, Any] | None,
    reason: str | None,
    now: datetime,
    column_updates: dict[str, Any] | None = None,
    committed_digest: str | None = None,
) -> None:
    """Write a changed decision: state and version under the optimistic check, then the
    history row, the audit record and the outbox event, all in the caller's transaction.

    ``row`` must be locked and freshly read. Its stored record must be the one the last
    lifecycle audit record committed to (:func:`check_record_committed`), else
    :class:`MissionRecordTampered` and nothing is written. A caller that made that check
    itself, in this transaction, under this lock and on this ``row.record``, passes the
    digest it returned as ``committed_digest`` (approval checks before it reads the record),
    and the query and digest are not repeated. ``column_updates`` may replace the record
    (approval fills its approval members); the audit record then commits to the new record,
    which is passed on explicitly."""
    current = row.record
    if committed_digest is not None:
        current_digest = committed_digest
    else:
        current_digest = check_record_committed(
            session, row.mission_id, current, decision.event
        )
    updates = dict(column_updates or {})
    if "record" in updates:
        record = updates["record"]
        digest_after = digest_json(record)
    else:
        record, digest_after = current, current_digest
    values = {
        "state": decision.to_state.value,
        "version": decision.to_version,
        **updates,
    }
    result = session.execute(
        update(Mission)
        .where(Mission.mission_id == row.mission_id, Mission.version == decision.from_version)
        .values(**values)
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        raise ConcurrentModification(
            f"the Mission changed while {decision.event.value} was being applied"
        )
    session.add(
        MissionHistory(
            mission_id=row.mission_id,
            version=decision.to_version,
            from_state=decision.from_state.value,
            to_state=decision.to_state.value,
            event=decision.event.value,
            actor=actor,
            reason=reason,
            committed_at=now,
        )
    )
    write_lifecycle_traces(
        session,
        row.mission_id,
        record,
        event=decision.event.value,
        prior_state=decision.from_state.value,
        state=decision.to_state.value,
        version=decision.to_version,
        actor=actor,
        reason=reason,
        now=now,
        record_digest=digest_after,
    )


def check_record_committed(session: Session, mission_id: str, record: Any, event: Event) -> str:
    """The digest of ``record`` (the Mission's stored record, read under the row lock),
    after checking it equals the ``record_digest`` of the Mission's last lifecycle audit
    record; raises :class:`MissionRecordTampered` otherwise (a record no lifecycle record
    committed to, or a Mission the log never saw). Checked for every event, the approval
    included: the approval adds members to the record, but the record it starts from must
    be the one committed at submission."""
    last = session.execute(
        select(AuditRecord.seq, AuditRecord.data)
        .where(
            AuditRecord.mission_id == mission_id,
            AuditRecord.event.in_(LIFECYCLE_AUDIT_EVENTS),
        )
        .order_by(AuditRecord.mission_seq.desc())
        .limit(1)
    ).first()
    try:
        digest = digest_json(record)
    except InvalidRequest:  # no canonical form (a float that is not finite, ...)
        digest = None
    committed = last.data.get("record_digest") if last and isinstance(last.data, dict) else None
    if digest is None or committed != digest:
        raise MissionRecordTampered(mission_id, last.seq if last else None, event.value)
    return digest


def write_lifecycle_traces(
    session: Session,
    mission_id: str,
    record: dict[str, Any],
    *,
    event: str,
    prior_state: str | None,
    state: str,
    version: int,
    actor: dict[str, Any] | None,
    reason: str | None,
    now: datetime,
    audit_event: str = AUDIT_TRANSITION,
    record_digest: str | None = None,
) -> None:
    """The audit record and the outbox event of one committed lifecycle event. ``record`` is
    the Mission's stored record as it stands after the event (passed by the caller, never
    read back from the session); the audit record commits to its digest (``record_digest``
    when the caller computed it already), so ``audit verify`` can prove no member (subject,
    client, narrowing decisions, ...) was rewritten afterwards, even with the filter columns
    rewritten to match."""
    audit.append(
        session,
        event=audit_event,
        mission_id=mission_id,
        actor=actor,
        anchors=anchors_of(record),
        policy_version=record.get("policy_version"),
        data={
            "event": event,
            "prior_state": prior_state,
            "state": state,
            "version": version,
            "reason": reason,
            "record_digest": record_digest or digest_json(record),
        },
        at=now,
    )
    outbox.enqueue(
        session,
        topic=outbox.LIFECYCLE_TOPIC,
        mission_id=mission_id,
        payload={
            "mission": {"id": mission_id, "origin": record["origin"]},
            "state": state,
            "prior_state": prior_state,
            "version": version,
            "committed_at": format_instant(now),
            "reason": reason,
        },
        now=now,
    )
    # Every process serving this database learns of the new version when this commits
    # (PostgreSQL NOTIFY, and in-process after commit): store/change_feed.py.
    change_feed.announce(session, mission_id, version)


def _check_event(event: Event | str) -> Event:
    try:
        return Event(event)
    except ValueError:
        raise InvalidRequest(f"unknown lifecycle event {event!r}") from None


def _check_roles(roles: Iterable[Role | str]) -> frozenset[Role]:
    if isinstance(roles, str):
        raise InvalidRequest("roles must be a collection of role names")
    try:
        return frozenset(Role(role) for role in roles)
    except ValueError:
        raise InvalidRequest("unknown role") from None


def check_trace_inputs(actor: dict[str, Any] | None, reason: str | None, now: datetime) -> None:
    require_aware(now, "now")
    if actor is not None:
        if not isinstance(actor, dict):
            raise InvalidRequest("actor must be a JSON object")
        digest_json(actor)  # refuses what has no canonical JSON form, before any write
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH):
        raise InvalidRequest(f"reason must be a string of at most {MAX_REASON_LENGTH} characters")
