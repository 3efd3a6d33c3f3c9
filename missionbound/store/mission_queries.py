"""Read queries for people browsing Missions (the web console, DESIGN.md "Pages").

Reads only. Missions are filtered by their *effective* state (PROFILE.md section 7, clock
first: a Mission past ``mission_expiry`` is ``expired`` whatever the row says until the
sweep persists it), by subject and client, and by who may see them (the rule of
:func:`missionbound.issuer.mission_access.user_may_see`, in SQL so counts and pages are
exact); newest first, a page at a time. A Mission's audit records come in ``mission_seq``
order, a page at a time. Changing a Mission is :func:`missionbound.issuer.lifecycle.
change_lifecycle`, never anything here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, false, func, not_, or_, select
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest, InvalidState
from missionbound.mission.lifecycle import (
    DEFAULT_POLICY,
    TERMINAL_STATES,
    LifecyclePolicy,
    State,
)
from missionbound.mission.record import MissionRecord, check_mission_id
from missionbound.store.lifecycle import due_for_expiry
from missionbound.store.mission_rows import to_record
from missionbound.store.models import AuditRecord, IssuedToken, Mission
from missionbound.store.validation import require_aware

MAX_PAGE_SIZE = 200
MAX_FILTER_LENGTH = 255  # subject_sub and client_id columns


@dataclass(frozen=True)
class ListedMission:
    """One row of a listing. ``record`` is None when the stored row cannot be read as a
    Mission (an unknown state, a malformed record: only tampering makes one); such a row is
    shown as unreadable, never as something it might be."""

    mission_id: str
    record: MissionRecord | None


@dataclass(frozen=True)
class MissionPage:
    missions: list[ListedMission]
    total: int  # how many Missions match the filters, over every page


def effective_state_is(state: State, now: datetime,
                       policy: LifecyclePolicy = DEFAULT_POLICY) -> ColumnElement[bool]:
    """SQL: the Mission's effective state at ``now`` is ``state``."""
    due = due_for_expiry(now, policy)
    if state is State.EXPIRED:
        return or_(Mission.state == State.EXPIRED.value, due)
    if state in TERMINAL_STATES:
        return Mission.state == state.value
    return and_(Mission.state == state.value, not_(due))


def visible_to(username: str) -> ColumnElement[bool]:
    """SQL: ``username`` holds a person's role on the Mission other than administrator
    (subject, or the approver who approved it), as ``mission_access.roles_of_user`` says."""
    approver = Mission.record[("approver", "sub")].as_string()
    return or_(Mission.subject_sub == username, approver == username)


def search_missions(
    session: Session,
    *,
    now: datetime,
    policy: LifecyclePolicy = DEFAULT_POLICY,
    state: State | None = None,
    subject: str | None = None,
    client_id: str | None = None,
    viewer: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> MissionPage:
    """Missions matching every filter given, newest first (``created_at``, then id).

    ``viewer`` limits the result to the Missions that person holds a role on; None means
    every Mission (an administrator). ``offset``/``limit`` select the page."""
    require_aware(now, "now")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidRequest("offset must be a non-negative integer")
    conditions: list[ColumnElement[bool]] = []
    if state is not None:
        conditions.append(effective_state_is(State(state), now, policy))
    for value, column in ((subject, Mission.subject_sub), (client_id, Mission.client_id)):
        if value is not None:
            if not isinstance(value, str) or len(value) > MAX_FILTER_LENGTH:
                # Longer than the column holds: nothing can match; say so instead.
                raise InvalidRequest(f"filters are at most {MAX_FILTER_LENGTH} characters")
            conditions.append(column == value)
    if viewer is not None:
        conditions.append(visible_to(viewer) if viewer else false())
    total = session.scalar(select(func.count()).select_from(Mission).where(*conditions)) or 0
    rows = session.scalars(
        select(Mission)
        .where(*conditions)
        .order_by(Mission.created_at.desc(), Mission.mission_id)
        .offset(offset)
        .limit(limit)
    )
    listed = []
    for row in rows:
        try:
            record: MissionRecord | None = to_record(row)
        except InvalidState:
            record = None
        listed.append(ListedMission(row.mission_id, record))
    return MissionPage(listed, int(total))


@dataclass(frozen=True)
class AuditPage:
    records: list[AuditRecord]
    more: bool  # records after the last one returned exist


def mission_audit_records(
    session: Session, mission_id: str, *, after_seq: int = 0, limit: int = MAX_PAGE_SIZE
) -> AuditPage:
    """The Mission's audit records with ``mission_seq > after_seq``, oldest first (section
    15: ``mission_seq`` numbers one Mission's records without gaps)."""
    check_mission_id(mission_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    found = list(session.scalars(
        select(AuditRecord)
        .where(AuditRecord.mission_id == mission_id, AuditRecord.mission_seq > after_seq)
        .order_by(AuditRecord.mission_seq)
        .limit(limit + 1)
    ))
    return AuditPage(found[:limit], len(found) > limit)


def tokens_issued(session: Session, mission_id: str) -> int:
    """How many tokens the AS minted for this Mission (``issued_tokens`` rows)."""
    check_mission_id(mission_id)
    count = session.scalar(
        select(func.count()).select_from(IssuedToken).where(IssuedToken.mission_id == mission_id)
    )
    return int(count or 0)
