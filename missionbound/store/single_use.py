"""Exactly-once values: DPoP proof ``jti`` (RFC 9449 section 11.1), ID-JAG ``jti``
(PROFILE.md section 11), server nonces. The ``(namespace, value)`` primary key is the whole
mechanism: under any concurrency, on any number of replicas, one transaction wins.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CursorResult, delete
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import SingleUseId
from missionbound.store.upsert import insert_ignoring_conflicts
from missionbound.store.validation import require_aware

MAX_NAMESPACE = 64
MAX_VALUE = 512


def consume_once(session: Session, namespace: str, value: str, expires_at: datetime) -> bool:
    """Record ``value`` as used in ``namespace``; True the first time, False ever after.

    Inside the caller's transaction: if that transaction rolls back, the value was not
    consumed. Keep ``expires_at`` at least as long as the value could be accepted
    otherwise (a proof's ``iat`` window): :func:`purge_expired` forgets it after that.
    """
    if not isinstance(namespace, str) or not 0 < len(namespace) <= MAX_NAMESPACE:
        raise InvalidRequest(f"single-use namespace must be 1 to {MAX_NAMESPACE} characters")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_VALUE:
        raise InvalidRequest(f"single-use value must be 1 to {MAX_VALUE} characters")
    require_aware(expires_at, "expires_at")
    return insert_ignoring_conflicts(
        session, SingleUseId, {"namespace": namespace, "value": value, "expires_at": expires_at}
    )


def purge_expired(session: Session, now: datetime) -> int:
    """Forget values whose ``expires_at`` has passed; returns how many."""
    require_aware(now, "now")
    result = session.execute(delete(SingleUseId).where(SingleUseId.expires_at <= now))
    assert isinstance(result, CursorResult)
    return result.rowcount
