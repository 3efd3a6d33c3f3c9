"""Shared Signals streams and the Security Event Tokens they owe (PROFILE.md section 10,
"Signals"; OpenID Shared Signals Framework 1.0; RFC 8935 push; RFC 8936 poll).

Repository functions on the caller's session; nothing here commits. Two queues meet here:

* The **outbox** (``store.outbox``, topic ``mission.lifecycle``) holds one event per committed
  lifecycle transition. The fan-out (``issuer.signal_delivery``) turns each into one
  :class:`SignalDelivery` per stream that may see it, in the transaction that marks the event
  delivered: a crash loses nothing and duplicates nothing. :func:`lock_fan_out` makes the
  fan-out one writer at a time, so deliveries get ids in outbox order and each stream's queue
  is in commit order.
* A **stream's deliveries**, sent in ``id`` order. A push stream is worked by one dispatcher
  at a time: :func:`claim_push_streams` takes the stream with a lease (``next_attempt_at`` set
  into the future, in a short transaction of its own), the HTTP call runs with no transaction
  open, and each answer is written (:func:`renew_lease`, :func:`mark_sent`,
  :func:`record_push_failure`, :func:`release_push_stream`) fenced on that lease: a dispatcher
  whose lease lapsed and was taken over writes nothing about the stream.

Lock order, for every writer (so PostgreSQL never has to break a deadlock): the fan-out lock,
outbox rows, then a stream row, then that stream's deliveries.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, exists, func, select, text, update
from sqlalchemy.orm import Session

from missionbound.store.models import SignalDelivery, SignalStream
from missionbound.store.validation import require_aware

STATUS_ENABLED = "enabled"
STATUS_PAUSED = "paused"
STATUS_DISABLED = "disabled"
STREAM_STATUSES = (STATUS_ENABLED, STATUS_PAUSED, STATUS_DISABLED)

PUSH_METHOD = "urn:ietf:rfc:8935"
POLL_METHOD = "urn:ietf:rfc:8936"

MAX_ERROR_LENGTH = 1024  # ssf_deliveries.last_error and ssf_streams.last_error
# The first key of the per-client lock that serializes stream creation (two-key advisory locks
# live in their own key space, apart from the fan-out's single-key lock).
STREAM_CREATE_LOCK_SPACE = 0x55F5

# The fan-out's PostgreSQL advisory lock (transaction scoped): any constant shared by every
# replica; this one spells "mbSSF" in ASCII.
FAN_OUT_LOCK_KEY = 0x6D_62_53_53_46


# -- streams -------------------------------------------------------------------------------


def add_stream(
    session: Session,
    *,
    stream_id: str,
    client_id: str,
    audience: str,
    delivery_method: str,
    endpoint_url: str | None,
    authorization_header: str | None,
    events_requested: list[str],
    description: str | None,
    now: datetime,
) -> SignalStream:
    require_aware(now, "now")
    stream = SignalStream(
        stream_id=stream_id,
        client_id=client_id,
        audience=audience,
        delivery_method=delivery_method,
        endpoint_url=endpoint_url,
        authorization_header=authorization_header,
        events_requested=list(events_requested),
        description=description,
        status=STATUS_ENABLED,
        status_reason=None,
        created_at=now,
        updated_at=now,
        attempts=0,
        next_attempt_at=None,
        last_error=None,
    )
    session.add(stream)
    session.flush()
    return stream


def count_streams(session: Session, client_id: str, *, for_create: bool = False) -> int:
    """How many streams ``client_id`` has. ``for_create``: first take a per-client lock held
    to commit (PostgreSQL ``pg_advisory_xact_lock``; on SQLite the write transaction already
    serializes writers), so concurrent creates cannot all see room for one more."""
    if for_create and session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:space AS integer), hashtext(:client_id))"),
            {"space": STREAM_CREATE_LOCK_SPACE, "client_id": client_id},
        )
    return int(
        session.scalar(
            select(func.count()).select_from(SignalStream).where(
                SignalStream.client_id == client_id
            )
        )
        or 0
    )


def get_stream(
    session: Session, stream_id: str, *, client_id: str, for_update: bool = False
) -> SignalStream | None:
    """The stream ``stream_id`` if it belongs to ``client_id``; None otherwise (another
    client's stream and no stream look the same)."""
    statement = select(SignalStream).where(
        SignalStream.stream_id == stream_id, SignalStream.client_id == client_id
    )
    if for_update:
        statement = statement.with_for_update()
    return session.execute(
        statement.execution_options(populate_existing=True)
    ).scalar_one_or_none()


def list_streams(session: Session, client_id: str) -> list[SignalStream]:
    return list(
        session.scalars(
            select(SignalStream)
            .where(SignalStream.client_id == client_id)
            .order_by(SignalStream.created_at, SignalStream.stream_id)
        )
    )


def remove_stream(session: Session, stream: SignalStream) -> None:
    """Delete the stream and every SET it still owed (SSF 1.0: a deleted stream delivers
    nothing more)."""
    session.execute(delete(SignalDelivery).where(SignalDelivery.stream_id == stream.stream_id))
    session.delete(stream)
    session.flush()


def set_status(
    session: Session, stream: SignalStream, status: str, reason: str | None, now: datetime
) -> None:
    """Change the stream's status. ``disabled`` drops what was queued (SSF 1.0: a disabled
    stream does not hold events); ``paused`` keeps it for when the stream is enabled again.
    A stream enabled again is due at once (its backoff is forgotten)."""
    require_aware(now, "now")
    if status not in STREAM_STATUSES:
        raise ValueError(f"unknown stream status {status!r}")
    if status == STATUS_DISABLED:
        session.execute(
            delete(SignalDelivery).where(
                SignalDelivery.stream_id == stream.stream_id,
                SignalDelivery.delivered_at.is_(None),
            )
        )
    if status != stream.status:
        stream.attempts = 0
        stream.next_attempt_at = None
    stream.status = status
    stream.status_reason = reason
    stream.updated_at = now
    session.flush()


def streams_receiving(session: Session) -> list[SignalStream]:
    """Streams that take new events (enabled or paused), each locked against a concurrent
    status change or deletion for the rest of the fan-out transaction (``FOR SHARE``)."""
    return list(
        session.scalars(
            select(SignalStream)
            .where(SignalStream.status.in_((STATUS_ENABLED, STATUS_PAUSED)))
            .order_by(SignalStream.stream_id)
            .with_for_update(read=True)
        )
    )


def lock_fan_out(session: Session) -> bool:
    """Take the fan-out lock for this transaction; False when another transaction holds it
    (PostgreSQL ``pg_try_advisory_xact_lock``). On SQLite the write transaction is the lock
    already. One fan-out at a time keeps each stream's queue in outbox order: two fan-outs
    committing out of order could queue a Mission's version 3 before its version 2."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(
        session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FAN_OUT_LOCK_KEY})
    )


# -- deliveries ----------------------------------------------------------------------------


def add_delivery(
    session: Session,
    *,
    stream_id: str,
    jti: str,
    event_type: str,
    mission_id: str | None,
    claims: dict[str, Any],
    now: datetime,
) -> SignalDelivery:
    require_aware(now, "now")
    delivery = SignalDelivery(
        stream_id=stream_id,
        jti=jti,
        event_type=event_type,
        mission_id=mission_id,
        claims=claims,
        created_at=now,
        delivered_at=None,
        attempts=0,
        last_error=None,
    )
    session.add(delivery)
    return delivery


@dataclass(frozen=True)
class Owed:
    """One SET a stream still owes, as the senders need it (no ORM entity: they outlive the
    transaction that read them)."""

    id: int
    jti: str
    claims: dict[str, Any]


def owed(session: Session, stream_id: str, *, limit: int) -> list[Owed]:
    """The stream's undelivered SETs, oldest first."""
    rows = session.execute(
        select(SignalDelivery.id, SignalDelivery.jti, SignalDelivery.claims)
        .where(SignalDelivery.stream_id == stream_id, SignalDelivery.delivered_at.is_(None))
        .order_by(SignalDelivery.id)
        .limit(limit)
    )
    return [Owed(row.id, row.jti, row.claims) for row in rows]


def owed_counts(session: Session) -> dict[str, int]:
    """How many SETs each stream still owes (streams that owe none are left out)."""
    return {
        row.stream_id: int(row.n)
        for row in session.execute(
            select(SignalDelivery.stream_id, func.count().label("n"))
            .where(SignalDelivery.delivered_at.is_(None))
            .group_by(SignalDelivery.stream_id)
        )
    }


def has_owed(session: Session, stream_id: str, *, after_id: int | None = None) -> bool:
    condition = [SignalDelivery.stream_id == stream_id, SignalDelivery.delivered_at.is_(None)]
    if after_id is not None:
        condition.append(SignalDelivery.id > after_id)
    return bool(session.scalar(select(exists().where(*condition))))


def acknowledge(
    session: Session,
    stream_id: str,
    jtis: Iterable[str],
    *,
    now: datetime,
    errors: dict[str, str] | None = None,
) -> int:
    """Mark the stream's SETs named by ``jtis`` delivered (RFC 8936 ``ack``), and those in
    ``errors`` delivered with that error (RFC 8936 ``setErrs``: the receiver rejected them;
    they are not sent again). SETs of other streams and unknown ``jti`` values are ignored.
    Returns how many rows changed."""
    require_aware(now, "now")
    changed = 0
    acked = sorted(set(jtis) - set(errors or {}))
    if acked:
        changed += _rowcount(
            session.execute(
                update(SignalDelivery)
                .where(
                    SignalDelivery.stream_id == stream_id,
                    SignalDelivery.jti.in_(acked),
                    SignalDelivery.delivered_at.is_(None),
                )
                .values(delivered_at=now, attempts=SignalDelivery.attempts + 1)
            )
        )
    for jti, error in sorted((errors or {}).items()):
        changed += _rowcount(
            session.execute(
                update(SignalDelivery)
                .where(
                    SignalDelivery.stream_id == stream_id,
                    SignalDelivery.jti == jti,
                    SignalDelivery.delivered_at.is_(None),
                )
                .values(
                    delivered_at=now,
                    attempts=SignalDelivery.attempts + 1,
                    last_error=error[:MAX_ERROR_LENGTH],
                )
            )
        )
    return changed


def has_owed_of_type(session: Session, stream_id: str, event_type: str) -> bool:
    """Whether the stream still owes a SET of ``event_type`` (a verification not yet
    delivered)."""
    return bool(session.scalar(select(exists().where(
        SignalDelivery.stream_id == stream_id,
        SignalDelivery.event_type == event_type,
        SignalDelivery.delivered_at.is_(None),
    ))))


def last_verification_at(session: Session, stream_id: str, event_type: str) -> datetime | None:
    """When the stream's newest SET of ``event_type`` (the verification event) was queued."""
    value = session.scalar(
        select(func.max(SignalDelivery.created_at)).where(
            SignalDelivery.stream_id == stream_id, SignalDelivery.event_type == event_type
        )
    )
    return value if isinstance(value, datetime) else None


def purge_delivered(session: Session, *, before: datetime, limit: int = 1000) -> int:
    """Forget delivered SETs queued before ``before`` (at most ``limit`` per call)."""
    require_aware(before, "before")
    ids = session.scalars(
        select(SignalDelivery.id)
        .where(SignalDelivery.delivered_at.is_not(None), SignalDelivery.created_at < before)
        .order_by(SignalDelivery.id)
        .limit(limit)
    ).all()
    if not ids:
        return 0
    return _rowcount(session.execute(delete(SignalDelivery).where(SignalDelivery.id.in_(ids))))


# -- push: claiming a stream and recording what the receiver answered ----------------------


@dataclass(frozen=True)
class PushClaim:
    """A push stream one dispatcher works on until ``lease`` (the fencing value: the stream's
    ``next_attempt_at`` as this dispatcher set it)."""

    stream_id: str
    endpoint_url: str
    authorization_header: str | None
    attempts: int
    lease: datetime


def claim_push_streams(
    session: Session,
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
    push_clients: Collection[str],
) -> list[PushClaim]:
    """Enabled push streams of ``push_clients`` that owe SETs and are due (not backing off,
    not leased to another dispatcher), locked (``SKIP LOCKED``: rows another replica is claiming are
    skipped) and leased until ``lease_until``. Commit promptly: the lease, not the row lock,
    keeps other dispatchers away while this one sends."""
    require_aware(now, "now")
    require_aware(lease_until, "lease_until")
    owes = exists().where(
        SignalDelivery.stream_id == SignalStream.stream_id,
        SignalDelivery.delivered_at.is_(None),
    )
    streams = session.scalars(
        select(SignalStream)
        .where(
            SignalStream.delivery_method == PUSH_METHOD,
            SignalStream.status == STATUS_ENABLED,
            SignalStream.client_id.in_(sorted(push_clients)),
            SignalStream.endpoint_url.is_not(None),
            (SignalStream.next_attempt_at.is_(None)) | (SignalStream.next_attempt_at <= now),
            owes,
        )
        .order_by(SignalStream.next_attempt_at.is_not(None), SignalStream.next_attempt_at,
                  SignalStream.stream_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    claims = []
    for stream in streams:
        stream.next_attempt_at = lease_until
        assert stream.endpoint_url is not None
        claims.append(
            PushClaim(
                stream_id=stream.stream_id,
                endpoint_url=stream.endpoint_url,
                authorization_header=stream.authorization_header,
                attempts=stream.attempts,
                lease=lease_until,
            )
        )
    session.flush()
    return claims


def renew_lease(session: Session, claim: PushClaim, *, lease_until: datetime) -> PushClaim | None:
    """The receiver answered (so it is up: its backoff is forgotten); extend the claim,
    fenced. The renewed claim, or None when the lease was lost (taken over after it lapsed,
    or the stream was paused, disabled, switched to poll, given a new endpoint or deleted)."""
    if not _fenced_update(session, claim, {"next_attempt_at": lease_until, "attempts": 0}):
        return None
    return PushClaim(
        claim.stream_id, claim.endpoint_url, claim.authorization_header, 0, lease_until
    )


def mark_sent(
    session: Session, delivery_id: int, *, now: datetime, error: str | None = None
) -> None:
    """The receiver answered for this SET: 202 (``error`` None) or an RFC 8935 rejection
    (not sent again). Recorded even when the stream's lease was lost meanwhile: the
    receiver did answer."""
    values: dict[str, Any] = {"delivered_at": now, "attempts": SignalDelivery.attempts + 1}
    if error is not None:
        values["last_error"] = error[:MAX_ERROR_LENGTH]
    session.execute(
        update(SignalDelivery)
        .where(SignalDelivery.id == delivery_id, SignalDelivery.delivered_at.is_(None))
        .values(**values)
    )


def record_rejection_on_stream(session: Session, claim: PushClaim, error: str) -> bool:
    """Keep the last rejection on the stream too (fenced); False when the lease was lost."""
    return _fenced_update(session, claim, {"last_error": error[:MAX_ERROR_LENGTH]})


def record_push_failure(
    session: Session,
    claim: PushClaim,
    delivery_id: int,
    *,
    now: datetime,
    error: str,
    max_backoff: timedelta,
) -> timedelta | None:
    """The receiver did not take the SET (network error, timeout, any status but 202 or an
    RFC 8935 400): count the attempt on the SET and back the whole stream off (1 s, doubling,
    at most ``max_backoff``) so its later SETs wait behind it. Returns the backoff, or None
    when the lease was lost (nothing written about the stream)."""
    attempts = claim.attempts + 1
    backoff = backoff_after(attempts, max_backoff)
    # The stream row first, then its SET (the lock order of every writer: see the module).
    done = _fenced_update(
        session,
        claim,
        {"attempts": attempts, "next_attempt_at": now + backoff,
         "last_error": error[:MAX_ERROR_LENGTH]},
    )
    session.execute(
        update(SignalDelivery)
        .where(SignalDelivery.id == delivery_id, SignalDelivery.delivered_at.is_(None))
        .values(attempts=SignalDelivery.attempts + 1, last_error=error[:MAX_ERROR_LENGTH])
    )
    return backoff if done else None


def release_push_stream(session: Session, claim: PushClaim) -> bool:
    """The dispatcher is done with the stream for now and it is healthy: forget the backoff
    and the lease, so its next SET is due at once. False when the lease was lost."""
    return _fenced_update(session, claim, {"attempts": 0, "next_attempt_at": None})


def backoff_after(attempts: int, max_backoff: timedelta) -> timedelta:
    """1 s after the first failed attempt, doubling with each further one, capped."""
    exponent = min(max(attempts - 1, 0), 40)
    return min(timedelta(seconds=2**exponent), max_backoff)


def _fenced_update(session: Session, claim: PushClaim, values: dict[str, Any]) -> bool:
    result = session.execute(
        update(SignalStream)
        .where(
            SignalStream.stream_id == claim.stream_id,
            SignalStream.next_attempt_at == claim.lease,
            SignalStream.status == STATUS_ENABLED,
            SignalStream.delivery_method == PUSH_METHOD,
        )
        .values(**values)
    )
    return _rowcount(result) == 1


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
