"""The periodic expiry sweep of a serving process (PROFILE.md section 7, "clock").

The same tick forgets spent single-use values and lifecycle nonces whose window has closed.

Expiry is clock-first everywhere (an expired Mission never permits anything, whatever is
stored), so the sweep is about the record and its traces: it persists ``expired`` with its
history row, audit record and outbox event for Missions nobody touched since they lapsed.

Each due Mission is expired in its own transaction, so one Mission whose expiry cannot be
written (a record rewritten outside the AS, which is refused rather than committed to the
audit log; a conflicting history row) is logged with its id and skipped while every other
due Mission still expires; it is tried again at the next tick. The log line carries the
exception type and the first line of its message, never SQL or bound parameters. Several
replicas may sweep at once: a Mission another transaction holds is skipped (PostgreSQL
``SKIP LOCKED``), and :func:`~missionbound.store.lifecycle.expire_if_due` re-checks
everything under the row lock, so a Mission is never expired twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError, OperationalError

from missionbound.mission.lifecycle import LifecyclePolicy
from missionbound.runtime import idempotency
from missionbound.store import lifecycle_requests, single_use
from missionbound.store.lifecycle import due_for_expiry, expire_if_due
from missionbound.store.models import Mission
from missionbound.store.transactions import Store
from missionbound.store.validation import require_aware

log = structlog.get_logger("missionbound.expiry_sweep")
BATCH = 500  # due Missions read per query; each is then expired in its own transaction


def sweep_once(store: Store, now: datetime, policy: LifecyclePolicy) -> int:
    """Expire every due Mission, each in its own transaction; return how many moved.

    A Mission whose expiry raises is logged (``mission_expiry_failed`` with its
    ``mission_id``) and skipped. An :class:`~sqlalchemy.exc.OperationalError` (the database
    is away, a lock timeout, a deadlock) or a lost connection is not about one Mission: it ends
    the sweep and is raised, for the caller to log once and retry at the next tick.
    """
    require_aware(now, "now")
    total = 0
    after: str | None = None
    while True:
        due = _due_ids(store, now, policy, after)
        for mission_id in due:
            if _expire_one(store, mission_id, now, policy):
                total += 1
        if len(due) < BATCH:
            return total
        after = due[-1]


def purge_once(store: Store, now: datetime) -> int:
    """Forget single-use values (DPoP proof ``jti``, client assertion ``jti``, permit
    ``jti``), lifecycle request nonces and idempotency claims past the end of their window:
    after it they would be refused as too old (or treated as new) anyway, so the tables stay
    as large as one window of traffic instead of growing forever. Returns how many rows
    went."""
    require_aware(now, "now")
    with store.begin() as session:
        return (
            single_use.purge_expired(session, now)
            + lifecycle_requests.purge_expired(session, now, limit=10_000)
            + idempotency.purge_expired(session, now)
        )


def _due_ids(
    store: Store, now: datetime, policy: LifecyclePolicy, after: str | None
) -> Sequence[str]:
    """The next due Missions in ``mission_id`` order (candidates: ``expire_if_due`` decides
    under the row lock). Paging by id, not offset: a Mission that failed is not read again in
    this sweep, and one that expired leaves the due set without shifting the pages."""
    statement = select(Mission.mission_id).where(due_for_expiry(now, policy))
    if after is not None:
        statement = statement.where(Mission.mission_id > after)
    with store.read() as session, session.begin():
        return session.scalars(statement.order_by(Mission.mission_id).limit(BATCH)).all()


def _expire_one(store: Store, mission_id: str, now: datetime, policy: LifecyclePolicy) -> bool:
    """Expire one Mission in its own transaction; False when it was not due any more, is
    held by another transaction, or failed (logged)."""
    try:
        # A plain session, not Store.begin(): a failed expiry must not be retried "after the
        # rollback" right away; the next tick is the retry.
        with store.session() as session, session.begin():
            locked = session.scalar(
                select(Mission.mission_id)
                .where(Mission.mission_id == mission_id)
                .with_for_update(skip_locked=True)
            )
            if locked is None:  # held by another writer, which settles the clock itself
                return False
            return expire_if_due(session, mission_id, now=now, policy=policy) is not None
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise  # the database, not this Mission: end the sweep
        _log_failure(mission_id, exc)
        return False
    except Exception as exc:
        _log_failure(mission_id, exc)
        return False


def _log_failure(mission_id: str, exc: Exception) -> None:
    log.warning(
        "mission_expiry_failed",
        mission_id=mission_id,
        error=type(exc).__name__,
        detail=_detail(exc),
    )


def _detail(exc: Exception) -> str:
    """The first line of the driver's message (of ``exc`` itself when no driver raised it),
    at most 300 characters. SQLAlchemy's own text of a :class:`DBAPIError` adds the SQL
    statement and its bound parameters (Mission records, subjects), and PostgreSQL's
    ``DETAIL`` line the key values: neither belongs in a log line."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    detail = lines[0].strip() if lines else ""
    return detail if len(detail) <= 300 else detail[:297] + "..."


async def sweep_periodically(
    engine: Engine,
    *,
    interval_seconds: float,
    policy: LifecyclePolicy,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Sweep now, then every ``interval_seconds``, until cancelled. A failed sweep is logged
    and retried at the next tick: it must never take the server down."""
    store = Store(engine)
    while True:
        try:
            now = clock()
            moved = await asyncio.to_thread(sweep_once, store, now, policy)
            if moved:
                log.info("missions_expired", count=moved)
            await asyncio.to_thread(purge_once, store, now)
        except Exception as exc:  # the database may be briefly away; try again next tick
            log.warning("expiry_sweep_failed", error=type(exc).__name__, detail=_detail(exc))
        await asyncio.sleep(interval_seconds)
