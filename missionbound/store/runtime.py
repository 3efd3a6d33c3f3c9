"""The PDP's rows (PROFILE.md section 12): compiled policy artifacts, metering counters and
reservations, idempotency claims. Repositories in the caller's transaction, like
:mod:`missionbound.store.single_use`; the rules (what a reservation may take, what a
retried key gets) live in :mod:`missionbound.runtime.metering` and
:mod:`missionbound.runtime.idempotency`.

Lock order, extending the one in :mod:`missionbound.store.transactions`: the Mission row
(when a caller holds it) -> an idempotency claim -> reservations of one evaluation -> meter
counters (always in key order) -> evidence and audit chain heads. Counters are locked with
``SELECT ... FOR UPDATE`` (PostgreSQL); on SQLite every write transaction holds the database
write lock from its start (``BEGIN IMMEDIATE``), which serializes them the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, delete, select, tuple_
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import (
    IdempotencyClaim,
    MeterCounter,
    MeterReservation,
    PolicyArtifact,
    SingleUseId,
)
from missionbound.store.upsert import insert_ignoring_conflicts
from missionbound.store.validation import require_aware

CounterKey = tuple[str, str]  # (entry_digest, bound)

# runtime/permits.py PERMIT_NAMESPACE: where spent permits are remembered.
PERMIT_NAMESPACE = "permit"


# -- policy artifacts ------------------------------------------------------------------------


def save_policy_artifact(
    session: Session, *, mission_id: str, policy_version: str, artifact: dict[str, Any],
    now: datetime,
) -> bool:
    """Keep the artifact compiled for ``(mission_id, policy_version)``; True if stored now,
    False if that version was stored before (the same manifest digest, so the same
    artifact: approval replays store nothing twice)."""
    if not isinstance(policy_version, str) or not policy_version:
        raise InvalidRequest("policy_version must be a non-empty string")
    if not isinstance(artifact, dict):
        raise InvalidRequest("a policy artifact is a JSON object")
    require_aware(now, "now")
    return insert_ignoring_conflicts(session, PolicyArtifact, {
        "mission_id": mission_id, "policy_version": policy_version, "artifact": artifact,
        "created_at": now,
    })


def load_policy_artifact(
    session: Session, mission_id: str, policy_version: str
) -> dict[str, Any] | None:
    """The artifact stored for ``(mission_id, policy_version)``, or None."""
    return session.scalar(
        select(PolicyArtifact.artifact).where(
            PolicyArtifact.mission_id == mission_id,
            PolicyArtifact.policy_version == policy_version,
        )
    )


# -- meter counters and reservations ---------------------------------------------------------


def lock_counters(
    session: Session, mission_id: str, keys: Iterable[CounterKey]
) -> dict[CounterKey, MeterCounter]:
    """The counters of ``keys`` that exist, locked for update in key order (so two
    reservations over the same counters never deadlock)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = session.scalars(
        select(MeterCounter)
        .where(
            MeterCounter.mission_id == mission_id,
            tuple_(MeterCounter.entry_digest, MeterCounter.bound).in_(wanted),
        )
        .order_by(MeterCounter.entry_digest, MeterCounter.bound)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    return {(row.entry_digest, row.bound): row for row in rows}


def create_counter(
    session: Session, *, mission_id: str, key: CounterKey, limit_value: str,
    currency: str | None, now: datetime,
) -> None:
    """A counter at zero, unless another transaction created it first (then it waits for
    that one to commit or roll back)."""
    entry_digest, bound = key
    insert_ignoring_conflicts(session, MeterCounter, {
        "mission_id": mission_id, "entry_digest": entry_digest, "bound": bound,
        "limit_value": limit_value, "currency": currency, "used": "0", "updated_at": now,
    })


def counters_of(session: Session, mission_id: str) -> list[MeterCounter]:
    """Every counter of a Mission (console, evidence), unlocked."""
    return list(session.scalars(
        select(MeterCounter).where(MeterCounter.mission_id == mission_id)
        .order_by(MeterCounter.entry_digest, MeterCounter.bound)
    ).all())


def add_reservation(
    session: Session, *, evaluation_id: str, mission_id: str, key: CounterKey, amount: str,
    now: datetime, lease_until: datetime,
) -> None:
    entry_digest, bound = key
    session.add(MeterReservation(
        evaluation_id=evaluation_id, entry_digest=entry_digest, bound=bound,
        mission_id=mission_id, amount=amount, state="reserved", created_at=now,
        lease_until=lease_until, settled_at=None,
    ))


def lock_reservations(session: Session, evaluation_id: str) -> list[MeterReservation]:
    """The reservations one permit made, locked for update (settlement applies once)."""
    return list(session.scalars(
        select(MeterReservation)
        .where(MeterReservation.evaluation_id == evaluation_id)
        .order_by(MeterReservation.entry_digest, MeterReservation.bound)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all())


# -- idempotency claims ----------------------------------------------------------------------


def insert_claim(session: Session, values: dict[str, Any]) -> bool:
    """Claim a key: True if this transaction inserted it. A concurrent claimer of the same
    key waits here until the first commits (then gets False) or rolls back (then True)."""
    return insert_ignoring_conflicts(session, IdempotencyClaim, values)


def lock_claim(
    session: Session, mission_id: str, scope_digest: str, key: str
) -> IdempotencyClaim | None:
    return session.scalar(
        select(IdempotencyClaim)
        .where(
            IdempotencyClaim.mission_id == mission_id,
            IdempotencyClaim.scope_digest == scope_digest,
            IdempotencyClaim.idempotency_key == key,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def delete_claim(session: Session, mission_id: str, scope_digest: str, key: str) -> None:
    session.execute(delete(IdempotencyClaim).where(
        IdempotencyClaim.mission_id == mission_id,
        IdempotencyClaim.scope_digest == scope_digest,
        IdempotencyClaim.idempotency_key == key,
    ))


def permit_consumed(session: Session, evaluation_id: str) -> bool:
    """Whether a tool runtime spent the permit ``evaluation_id`` (runtime/permits.py)."""
    return session.scalar(
        select(SingleUseId.value).where(
            SingleUseId.namespace == PERMIT_NAMESPACE, SingleUseId.value == evaluation_id
        )
    ) is not None


def purge_expired_claims(session: Session, now: datetime) -> int:
    """Forget claims past their horizon (``expires_at``); returns how many."""
    require_aware(now, "now")
    result = session.execute(delete(IdempotencyClaim).where(IdempotencyClaim.expires_at <= now))
    assert isinstance(result, CursorResult)
    return result.rowcount
