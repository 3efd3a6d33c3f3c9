"""Between a ``missions`` row and a :class:`~missionbound.mission.record.MissionRecord`.

The row keeps the immutable members as JSON (``record``) and the mutable or filterable ones
as columns; this module is the only place that knows how they fit together.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidState
from missionbound.mission.lifecycle import parse_state
from missionbound.mission.record import MissionRecord, Principal, format_instant
from missionbound.store.errors import MissionNotFound
from missionbound.store.models import Mission, MissionHistory

# Members that live in columns (mutable) or in the history table, not in the record JSON.
_NOT_IN_RECORD_JSON = ("state", "version", "lifecycle_history")


def record_json(record: MissionRecord) -> dict[str, Any]:
    """The JSON kept in ``missions.record``: the section 7 form minus the mutable members."""
    data = record.as_dict()
    for member in _NOT_IN_RECORD_JSON:
        data.pop(member)
    return data


class MissionColumns(Protocol):
    """What :func:`to_record` reads: a ``Mission`` entity, or a row of
    :data:`MISSION_RECORD_COLUMNS` (no ORM entity, for hot read-only paths)."""

    @property
    def mission_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def record(self) -> dict[str, Any]: ...
    @property
    def client_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def mission_expiry(self) -> datetime: ...
    @property
    def approval_event_id(self) -> str | None: ...
    @property
    def activated_at(self) -> datetime | None: ...


# Every column :func:`to_record` reads, for ``select(*MISSION_RECORD_COLUMNS)``.
MISSION_RECORD_COLUMNS = (
    Mission.mission_id,
    Mission.state,
    Mission.version,
    Mission.record,
    Mission.client_id,
    Mission.created_at,
    Mission.mission_expiry,
    Mission.approval_event_id,
    Mission.activated_at,
)


def to_record(
    row: MissionColumns, history: list[dict[str, Any]] | None = None
) -> MissionRecord:
    """Rebuild the record. An unknown stored state or a malformed record is refused
    (:class:`InvalidState`), never read as something that permits anything."""
    data = row.record
    try:
        approver = data.get("approver")
        return MissionRecord(
            mission_id=row.mission_id,
            origin=data["origin"],
            state=parse_state(row.state),
            version=row.version,
            mission_intent=data["mission_intent"],
            authorization_details_requested=data.get("authorization_details_requested") or [],
            authority_set=data["authority_set"],
            narrowing_decisions=data.get("narrowing_decisions") or [],
            subject=Principal(**data["subject"]) if data.get("subject") else None,
            client_id=row.client_id,
            policy_version=data["policy_version"],
            created_at=row.created_at,
            mission_expiry=row.mission_expiry,
            approver=Principal(**approver) if approver else None,
            proposal_hash=data.get("proposal_hash"),
            consent_rendering_hash=data.get("consent_rendering_hash"),
            authority_hash=data.get("authority_hash"),
            consent_disclosure=data.get("consent_disclosure"),
            approval_event_id=row.approval_event_id,
            activated_at=row.activated_at,
            lifecycle_history=history or [],
        )
    except (KeyError, TypeError, AttributeError):
        raise InvalidState(
            f"stored Mission {row.mission_id} is unreadable; refusing (fail closed)"
        ) from None


def lock_mission(session: Session, mission_id: str) -> Mission:
    """Read the row and lock it to the end of the transaction (``SELECT ... FOR UPDATE`` on
    PostgreSQL; on SQLite the ``BEGIN IMMEDIATE`` transaction already excludes writers)."""
    row = session.execute(
        select(Mission)
        .where(Mission.mission_id == mission_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if row is None:
        raise MissionNotFound("no such Mission")
    return row


def history_entry(entry: MissionHistory) -> dict[str, Any]:
    return {
        "version": entry.version,
        "event": entry.event,
        "from_state": entry.from_state,
        "to_state": entry.to_state,
        "actor": entry.actor,
        "reason": entry.reason,
        "committed_at": format_instant(entry.committed_at),
    }


def load_history(session: Session, mission_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Lifecycle history of several Missions in one query, oldest first."""
    ids = list(mission_ids)
    histories: dict[str, list[dict[str, Any]]] = {mission_id: [] for mission_id in ids}
    if not ids:
        return histories
    rows = session.scalars(
        select(MissionHistory)
        .where(MissionHistory.mission_id.in_(ids))
        .order_by(MissionHistory.mission_id, MissionHistory.version)
    )
    for entry in rows:
        histories[entry.mission_id].append(history_entry(entry))
    return histories


def anchors_of(data: dict[str, Any]) -> dict[str, str | None]:
    return {
        "proposal_hash": data.get("proposal_hash"),
        "consent_rendering_hash": data.get("consent_rendering_hash"),
        "authority_hash": data.get("authority_hash"),
    }
