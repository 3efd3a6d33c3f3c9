"""Lifecycle requests already answered: the ``nonce`` retry key (PROFILE.md section 10,
issuance digest 5.4).

One row per (caller, Mission, nonce), holding the digest of what was asked (operation,
reason, ``expected_version``). A retransmit of the same request is recognised and is not
applied a second time; the same nonce with another request is refused. Rows live for a
window (:func:`remember`'s ``expires_at``) and are then forgotten (:func:`purge_expired`).

Like every repository, nothing here commits: the row is written in the lifecycle request's
own transaction, so a refused request (which rolls back) leaves no row and may be retried
with the same nonce.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime

from sqlalchemy import CursorResult, delete, select, tuple_, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.mission.record import check_mission_id
from missionbound.store.models import LifecycleRequest
from missionbound.store.upsert import insert_ignoring_conflicts
from missionbound.store.validation import require_aware

MAX_CALLER = 255  # the column's length
MAX_NONCE = 255  # issuance digest 5.4: 1-255 characters


class Seen(enum.Enum):
    """What :func:`remember` found."""

    NEW = "new"  # first time: the request is to be applied
    SAME = "same"  # a retransmit of the request already answered
    DIFFERENT = "different"  # the nonce was used for another request


def caller_key(kind: str, name: str) -> str:
    """The ``caller`` column for a principal: ``client:<id>`` or ``user:<name>``; a key
    longer than the column is replaced by its SHA-256 (still one key per principal)."""
    key = f"{kind}:{name}"
    if len(key) <= MAX_CALLER:
        return key
    return f"{kind}#sha-256:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def remember(
    session: Session,
    *,
    caller: str,
    mission_id: str,
    nonce: str,
    request_digest: str,
    now: datetime,
    expires_at: datetime,
) -> Seen:
    """Record that ``caller`` sent ``nonce`` for ``mission_id`` with ``request_digest``.

    :attr:`Seen.NEW` when no live row existed (one is written now; a row past its
    ``expires_at`` is taken over); :attr:`Seen.SAME` when a live row holds the same digest;
    :attr:`Seen.DIFFERENT` when it holds another. Concurrent requests with the same key
    serialize on the primary key (the second waits for the first to commit or roll back)."""
    _check(caller, mission_id, nonce, request_digest)
    require_aware(now, "now")
    require_aware(expires_at, "expires_at")
    values = {
        "caller": caller,
        "mission_id": mission_id,
        "nonce": nonce,
        "request_digest": request_digest,
        "created_at": now,
        "expires_at": expires_at,
    }
    if insert_ignoring_conflicts(session, LifecycleRequest, values):
        return Seen.NEW
    key = (
        LifecycleRequest.caller == caller,
        LifecycleRequest.mission_id == mission_id,
        LifecycleRequest.nonce == nonce,
    )
    row = session.execute(
        select(LifecycleRequest.request_digest, LifecycleRequest.expires_at)
        .where(*key)
        .with_for_update()
    ).one()
    if row.expires_at <= now:
        # Forgotten already (the purge has not run yet): a new request.
        session.execute(
            update(LifecycleRequest)
            .where(*key)
            .values(request_digest=request_digest, created_at=now, expires_at=expires_at)
        )
        return Seen.NEW
    return Seen.SAME if row.request_digest == request_digest else Seen.DIFFERENT


def purge_expired(session: Session, now: datetime, *, limit: int = 1000) -> int:
    """Forget at most ``limit`` rows whose window has closed; returns how many."""
    require_aware(now, "now")
    expired = (
        select(LifecycleRequest.caller, LifecycleRequest.mission_id, LifecycleRequest.nonce)
        .where(LifecycleRequest.expires_at <= now)
        .order_by(LifecycleRequest.expires_at)
        .limit(limit)
    )
    result = session.execute(
        delete(LifecycleRequest).where(
            tuple_(LifecycleRequest.caller, LifecycleRequest.mission_id, LifecycleRequest.nonce)
            .in_(expired),
            LifecycleRequest.expires_at <= now,
        ).execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount


def _check(caller: str, mission_id: str, nonce: str, request_digest: str) -> None:
    if not isinstance(caller, str) or not 0 < len(caller) <= MAX_CALLER:
        raise InvalidRequest(f"caller must be 1 to {MAX_CALLER} characters")
    check_mission_id(mission_id)
    if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE:
        raise InvalidRequest(f"nonce must be 1 to {MAX_NONCE} characters")
    if not isinstance(request_digest, str) or not request_digest:
        raise InvalidRequest("request_digest must be a digest")
