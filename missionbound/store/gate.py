"""The derivation gate of PROFILE.md section 8.

Code redemption, refresh, token exchange and ID-JAG issuance each call
:func:`gate_derivation` inside the transaction that issues the token. The gate locks the
Mission row, lets only an effectively ``active`` Mission through, checks the counter against
``context.max_derivations`` and increments it. Because the lock is held until that
transaction commits, a revoke (which takes the same lock) is ordered entirely before or
entirely after each issuance: a revoke committed first always wins, and a token whose
transaction committed first was issued while the Mission was active. A refused or failed
derivation is rolled back with its transaction, so it is never counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidState
from missionbound.mission.lifecycle import (
    DEFAULT_POLICY,
    LifecyclePolicy,
    State,
    effective_state,
    is_effectively_active,
    parse_state,
)
from missionbound.mission.record import MissionRecord, check_mission_id
from missionbound.store.errors import DerivationRefused, MissionNotFound
from missionbound.store.lifecycle import expire_if_due
from missionbound.store.mission_rows import lock_mission, to_record
from missionbound.store.models import DerivationCounter
from missionbound.store.transactions import run_after_rollback
from missionbound.store.validation import require_aware

DERIVATIONS_EXHAUSTED = "derivations_exhausted"


@dataclass(frozen=True)
class Admitted:
    """One admitted derivation: the new count and the Mission as the gate read it, under
    the lock it holds to commit (without ``lifecycle_history``, which minting never needs)."""

    count: int
    mission: MissionRecord


def gate_derivation(
    session: Session,
    mission_id: str,
    *,
    now: datetime,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> int:
    """Admit one derivation for ``mission_id`` and return the new derivation count
    (:func:`admit_derivation`, for callers that need only the count)."""
    return admit_derivation(session, mission_id, now=now, policy=policy).count


def admit_derivation(
    session: Session,
    mission_id: str,
    *,
    now: datetime,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> Admitted:
    """Admit one derivation for ``mission_id``: the new derivation count and the locked
    Mission's record, so that the caller mints from exactly what the gate admitted without
    reading the Mission again.

    Raises :class:`DerivationRefused` (``invalid_grant``, with ``mission_state`` and a
    ``mission_error``) when the Mission is not effectively ``active`` or its cap is used
    up. A Mission past ``mission_expiry`` but stored ``active`` is refused all the same;
    :meth:`Store.begin` then persists the expiry in its own transaction.
    """
    require_aware(now, "now")
    try:
        check_mission_id(mission_id)
        row = lock_mission(session, mission_id)
    except MissionNotFound:
        raise DerivationRefused("the grant names no Mission", mission_state=None) from None
    try:
        stored = parse_state(row.state)
    except InvalidState:
        raise DerivationRefused(
            "the Mission is in an unknown state; refusing (fail closed)",
            mission_state=None,
            mission_error="mission_state_unknown",
        ) from None
    if not is_effectively_active(row.state, now=now, mission_expiry=row.mission_expiry):
        effective = effective_state(
            stored,
            now=now,
            mission_expiry=row.mission_expiry,
            created_at=row.created_at,
            policy=policy,
        )
        if effective is State.EXPIRED and stored is not State.EXPIRED:
            run_after_rollback(
                session,
                f"expire:{mission_id}",
                lambda fresh: expire_if_due(fresh, mission_id, now=now, policy=policy),
            )
        raise DerivationRefused(
            f"the Mission is {effective.value}; nothing can be derived from it",
            mission_state=effective.value,
            mission_error=f"mission_{effective.value}",
        )
    try:
        mission = to_record(row)
    except InvalidState:
        # An unreadable stored record is refused like an unknown state: invalid_grant, never
        # a 409 from the lifecycle surface.
        raise DerivationRefused(
            "the Mission record cannot be read; refusing (fail closed)",
            mission_state=None,
            mission_error="mission_state_unknown",
        ) from None
    cap = mission.max_derivations
    statement = update(DerivationCounter).where(DerivationCounter.mission_id == mission_id)
    if cap is not None:
        # The check and the increment are one statement; the Mission lock already
        # serializes gates, this keeps the counter right even for a caller that forgot it.
        statement = statement.where(DerivationCounter.count < cap)
    # A plain Core UPDATE on the session's connection: the counter is never an ORM entity.
    new_count = session.connection().execute(
        statement.values(count=DerivationCounter.count + 1).returning(DerivationCounter.count)
    ).scalar_one_or_none()
    if new_count is not None:
        return Admitted(int(new_count), mission)
    exists = session.scalar(
        select(DerivationCounter.mission_id).where(DerivationCounter.mission_id == mission_id)
    )
    if exists is None and (cap is None or cap >= 1):
        # A Mission stored without its counter (not through create_pending): start it.
        session.add(DerivationCounter(mission_id=mission_id, count=1))
        session.flush()
        return Admitted(1, mission)
    raise DerivationRefused(
        f"the Mission's {cap} derivations are used up",
        mission_state=State.ACTIVE.value,
        mission_error=DERIVATIONS_EXHAUSTED,
    )
