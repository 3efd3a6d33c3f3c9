"""What a Resource AS knows of Missions held elsewhere: the last state each origin's signed
Mission Status reported (``remote_missions``; PROFILE.md section 11, docs/resource-as.md).

A row is never a Mission record. It moves only forward by ``version``: an answer older than
the one stored (a slow reply overtaken by a newer one, another replica's) never regresses
it, and the same version only refreshes ``checked_at``. The forward-only rule is one
``UPDATE ... WHERE version <= :version`` after an ``INSERT ... ON CONFLICT DO NOTHING``, so
it holds on any number of replicas without a read first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import RemoteMission
from missionbound.store.upsert import insert_ignoring_conflicts
from missionbound.store.validation import require_aware


@dataclass(frozen=True)
class RemoteState:
    """One origin's word on one of its Missions, as a Mission Status response said it."""

    origin: str
    mission_id: str
    state: str
    version: int
    mission_expiry: datetime | None
    checked_at: datetime


_FORWARD = (
    update(RemoteMission)
    .where(
        RemoteMission.origin == bindparam("key_origin"),
        RemoteMission.mission_id == bindparam("key_mission_id"),
        or_(
            RemoteMission.version < bindparam("new_version"),
            # The same version again: only the instant of the check moves (forward).
            and_(RemoteMission.version == bindparam("new_version"),
                 RemoteMission.checked_at < bindparam("new_checked_at")),
        ),
    )
    .values(
        state=bindparam("new_state"),
        version=bindparam("new_version"),
        mission_expiry=bindparam("new_mission_expiry"),
        checked_at=bindparam("new_checked_at"),
    )
)

_READ = select(
    RemoteMission.origin,
    RemoteMission.mission_id,
    RemoteMission.state,
    RemoteMission.version,
    RemoteMission.mission_expiry,
    RemoteMission.checked_at,
).where(RemoteMission.origin == bindparam("origin"),
        RemoteMission.mission_id == bindparam("mission_id"))


def record_remote_state(session: Session, state: RemoteState) -> None:
    """Store ``state`` unless the row already holds a newer version (forward only)."""
    if state.version < 1:
        raise InvalidRequest("a Mission version is at least 1")
    require_aware(state.checked_at, "checked_at")
    if state.mission_expiry is not None:
        require_aware(state.mission_expiry, "mission_expiry")
    values = {
        "origin": state.origin,
        "mission_id": state.mission_id,
        "state": state.state,
        "version": state.version,
        "mission_expiry": state.mission_expiry,
        "checked_at": state.checked_at,
    }
    if insert_ignoring_conflicts(session, RemoteMission, values):
        return
    session.connection().execute(_FORWARD, {
        "key_origin": state.origin,
        "key_mission_id": state.mission_id,
        "new_state": state.state,
        "new_version": state.version,
        "new_mission_expiry": state.mission_expiry,
        "new_checked_at": state.checked_at,
    })


def remote_state(session: Session, origin: str, mission_id: str, *,
                 for_update: bool = False) -> RemoteState | None:
    """The last state recorded for ``mission_id`` of ``origin``, or None when none was.
    ``for_update`` reads it under the row's lock, after any concurrent writer commits."""
    statement = _READ.with_for_update() if for_update else _READ
    row = session.connection().execute(
        statement, {"origin": origin, "mission_id": mission_id}).first()
    if row is None:
        return None
    return RemoteState(row.origin, row.mission_id, row.state, row.version,
                       row.mission_expiry, row.checked_at)
