"""Idempotency keys at the PDP (runtime-digest sections 4.6 and 1.8, "PDP retransmission").

Before the PDP issues a keyed permit it claims ``(Mission, scope, key)`` for one operation
identity, atomically: of two concurrent requests exactly one inserts the claim, the other
waits for it to commit and then reads it. What a claim of the same key gets:

=========================================  ===================  =======================
prior permit                                same operation       another operation
=========================================  ===================  =======================
unexpired, not spent                        the prior decision   ``idempotency_conflict``
spent by a tool runtime                     ``duplicate_suppressed``   ``idempotency_conflict``
expired unspent, within the tombstone       a new permit (renew) ``idempotency_conflict``
expired, past the tombstone horizon         ``duplicate_suppressed``   ``idempotency_conflict``
=========================================  ===================  =======================

"The prior decision" is the same ``evaluation_id`` and the same permit, never metered twice.
A renewal first spends the expired permit's ``jti`` itself (the single-use row a tool
runtime would write), so a tool whose clock runs late can no longer run it, and releases
what it had reserved; the new permit is then metered like any other. Past the horizon
(:data:`~missionbound.protocol.permits.PERMIT_TOMBSTONE_HORIZON`) the single-use store may
have forgotten whether the permit ran, so the key is refused rather than guessed.

Claims are kept until ``keep_until`` (the Mission's expiry: a key can matter no longer than
the Mission can act) and then purged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from missionbound.mission.canonical import digest_json
from missionbound.protocol.permits import PERMIT_TOMBSTONE_HORIZON
from missionbound.runtime import metering
from missionbound.store import runtime as rows
from missionbound.store.single_use import consume_once
from missionbound.store.validation import require_aware

MAX_KEY_LENGTH = 255
# A permit's exp is the whole second of its valid_until: a tool may remember it from then.
_TOMBSTONE_MARGIN_SECONDS = 1


class ClaimStatus(enum.StrEnum):
    NEW = "new"  # this request owns the key: meter it, return its permit
    REPLAY = "replay"  # return the prior decision (evaluation_id, permit) unchanged
    CONFLICT = "idempotency_conflict"  # the key names another operation
    DUPLICATE = "duplicate_suppressed"  # the operation ran (or may have run) already


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim`. For ``NEW`` the members are the request's own; for
    ``REPLAY`` the prior decision's; for the refusals the prior claim's (not to be shown).
    ``replaced`` names the expired permit a renewal retired (its reservations released)."""

    status: ClaimStatus
    mission_id: str
    scope_digest: str
    key: str
    evaluation_id: str
    permit: str
    valid_until: datetime
    replaced: str | None = None


def scope_digest(
    *, mission_id: str, subject: Mapping[str, Any], actor: Mapping[str, Any], audience: str,
    action: str, resource: Mapping[str, Any],
) -> str:
    """The idempotency scope (runtime-digest 4.6: at least Mission, subject, actor,
    audience, action, resource; nothing volatile). ``subject`` ``{type, id}``, ``actor``
    ``{client_id, act}``, ``resource`` ``{type, id}``."""
    return digest_json({"mission": mission_id, "subject": dict(subject), "actor": dict(actor),
                        "audience": audience, "action": action, "resource": dict(resource)})


def operation_digest(
    *, action: str, resource: Mapping[str, Any], parameter_digest: str | None
) -> str:
    """The operation identity (runtime-digest 4.1): action + resource + the normalised
    effectful parameters (their ``parameter_digest``)."""
    return digest_json({"action": action, "resource": dict(resource),
                        "parameter_digest": parameter_digest})


def claim(
    session: Session,
    *,
    mission_id: str,
    scope_digest: str,
    key: str,
    operation_digest: str,
    evaluation_id: str,
    permit: str,
    valid_until: datetime,
    keep_until: datetime,
    now: datetime,
) -> Claim:
    """Claim ``key`` for this request's permit (``evaluation_id``, ``permit``, valid until
    ``valid_until``), in the caller's transaction; see the module documentation for what a
    claimed key gets. Call it after the decision permits and before :func:`metering.reserve`;
    if the reservation then fails, :func:`abandon` the claim."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"an idempotency key is 1 to {MAX_KEY_LENGTH} characters")
    for instant, name in ((valid_until, "valid_until"), (keep_until, "keep_until"),
                          (now, "now")):
        require_aware(instant, name)
    mine = Claim(ClaimStatus.NEW, mission_id, scope_digest, key, evaluation_id, permit,
                 valid_until)
    values = {
        "mission_id": mission_id, "scope_digest": scope_digest, "idempotency_key": key,
        "operation_digest": operation_digest, "evaluation_id": evaluation_id,
        "permit": permit, "valid_until": valid_until, "created_at": now,
        "expires_at": max(keep_until, valid_until),
    }
    if rows.insert_claim(session, values):
        return mine
    prior = rows.lock_claim(session, mission_id, scope_digest, key)
    if prior is None:  # pragma: no cover - deleted between our insert and lock
        raise RuntimeError("the idempotency claim vanished while being read; retry")
    found = Claim(ClaimStatus.REPLAY, mission_id, scope_digest, key, prior.evaluation_id,
                  prior.permit, prior.valid_until)
    if prior.operation_digest != operation_digest:
        return _as(found, ClaimStatus.CONFLICT)
    if rows.permit_consumed(session, prior.evaluation_id):
        return _as(found, ClaimStatus.DUPLICATE)
    if now < prior.valid_until:
        return found
    horizon = prior.valid_until + PERMIT_TOMBSTONE_HORIZON
    if (horizon - now).total_seconds() <= _TOMBSTONE_MARGIN_SECONDS:
        return _as(found, ClaimStatus.DUPLICATE)
    # Expired and never spent: retire it for good (a late tool now gets permit_consumed),
    # give back what it reserved, and let this request's permit take the key.
    if not consume_once(session, rows.PERMIT_NAMESPACE, prior.evaluation_id, horizon):
        return _as(found, ClaimStatus.DUPLICATE)  # pragma: no cover - spent just now
    metering.release(session, evaluation_id=prior.evaluation_id, now=now)
    replaced = prior.evaluation_id
    prior.evaluation_id, prior.permit, prior.valid_until = evaluation_id, permit, valid_until
    prior.created_at, prior.expires_at = now, max(prior.expires_at, valid_until)
    session.flush()
    return Claim(ClaimStatus.NEW, mission_id, scope_digest, key, evaluation_id, permit,
                 valid_until, replaced)


def abandon(session: Session, owned: Claim) -> None:
    """Drop a ``NEW`` claim whose permit was not issued after all (``quota_exceeded``):
    the key is free again. Only in the transaction that made the claim."""
    if owned.status is not ClaimStatus.NEW:
        raise ValueError("only a claim this request owns can be abandoned")
    rows.delete_claim(session, owned.mission_id, owned.scope_digest, owned.key)


def _as(found: Claim, status: ClaimStatus) -> Claim:
    return Claim(status, found.mission_id, found.scope_digest, found.key, found.evaluation_id,
                 found.permit, found.valid_until)


def purge_expired(session: Session, now: datetime) -> int:
    """Forget claims past their horizon; returns how many (the expiry sweep calls it)."""
    return rows.purge_expired_claims(session, now)


__all__: Sequence[str] = [
    "Claim",
    "ClaimStatus",
    "abandon",
    "claim",
    "operation_digest",
    "purge_expired",
    "scope_digest",
]
