"""The transactional outbox (PROFILE.md section 10, "Signals"; DESIGN.md "Scale-out").

An event is written in the same transaction as the change it announces, so a committed
change always has its event and a rolled-back one never does; a deliverer claims due events
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas never deliver the same event at the
same time), delivers them at least once and marks them. Receivers apply lifecycle events by
``version`` and never regress.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import OutboxEvent

LIFECYCLE_TOPIC = "mission.lifecycle"
# Topics whose events are due as soon as they are committed, claimed strictly in id order:
# their ``next_attempt_at`` is the writer's clock, and a replica whose clock runs ahead must
# not have its event skipped while a later one is delivered first (a Mission's events would
# then go out of order).
IMMEDIATE_TOPICS = frozenset({LIFECYCLE_TOPIC})


def enqueue(
    session: Session,
    *,
    topic: str,
    payload: dict[str, Any],
    mission_id: str | None,
    now: datetime,
) -> OutboxEvent:
    """Add one event, due immediately."""
    if not isinstance(topic, str) or not 0 < len(topic) <= 128:
        raise InvalidRequest("outbox topic must be a name of 1 to 128 characters")
    if not isinstance(payload, dict):
        raise InvalidRequest("outbox payload must be a JSON object")
    event = OutboxEvent(
        topic=topic,
        mission_id=mission_id,
        payload=payload,
        created_at=now,
        delivered_at=None,
        attempts=0,
        next_attempt_at=now,
    )
    session.add(event)
    session.flush()
    return event


def claim_due(
    session: Session, *, now: datetime, limit: int = 100, topic: str | None = None
) -> list[OutboxEvent]:
    """Undelivered events whose next attempt is due, oldest first, locked for this
    transaction (rows another replica holds are skipped, not waited for). Events of an
    :data:`IMMEDIATE_TOPICS` topic are all due, whatever their ``next_attempt_at``."""
    statement = (
        select(OutboxEvent)
        .where(OutboxEvent.delivered_at.is_(None))
        .order_by(OutboxEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if topic is not None:
        statement = statement.where(OutboxEvent.topic == topic)
    if topic not in IMMEDIATE_TOPICS:
        statement = statement.where(OutboxEvent.next_attempt_at <= now)
    return list(session.scalars(statement))


def mark_delivered(session: Session, event_id: int, *, now: datetime) -> None:
    session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.id == event_id, OutboxEvent.delivered_at.is_(None))
        .values(delivered_at=now, attempts=OutboxEvent.attempts + 1)
    )


def mark_failed(session: Session, event_id: int, *, now: datetime, retry_in: timedelta) -> None:
    """Count a failed attempt and push the next one ``retry_in`` into the future."""
    session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.id == event_id, OutboxEvent.delivered_at.is_(None))
        .values(attempts=OutboxEvent.attempts + 1, next_attempt_at=now + retry_in)
    )


def purge_delivered(session: Session, *, before: datetime, limit: int = 1000) -> int:
    """Forget events delivered before ``before`` (at most ``limit`` per call): once fanned
    out they are only history, and an outbox nobody trims grows forever."""
    ids = session.scalars(
        select(OutboxEvent.id)
        .where(OutboxEvent.delivered_at.is_not(None), OutboxEvent.delivered_at < before)
        .order_by(OutboxEvent.id)
        .limit(limit)
    ).all()
    if not ids:
        return 0
    result = session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids)))
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def events_for_mission(session: Session, mission_id: str) -> list[OutboxEvent]:
    """Every event of one Mission, in the order written."""
    return list(
        session.scalars(
            select(OutboxEvent).where(OutboxEvent.mission_id == mission_id).order_by(OutboxEvent.id)
        )
    )
