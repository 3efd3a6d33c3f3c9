"""Minting permits at the PDP and spending them once across replicas (PROFILE.md section 12,
"Permits"; runtime-digest sections 4.1, 4.4, 4.5).

:func:`mint_permit` signs the permit JWT with the Authorization Server's current key (the PDP
is co-located with the AS and publishes the same JWKS). The checks a tool runtime makes live
in :mod:`missionbound.protocol.permits` (pure, for every enforcement point); this module adds
the single-use store: the permit's ``jti`` (its ``evaluation_id``) recorded in
``single_use_ids`` under the namespace ``permit``, so two replicas never both run it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from joserfc import jwt
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from missionbound.issuer.keys import SignerKey
from missionbound.mission.lifecycle import is_effectively_active
from missionbound.protocol.jwks import KeySource
from missionbound.protocol.permits import (
    MAX_PERMIT_LIFETIME,
    MISSION_INACTIVE,
    PERMIT_TYPE,
    Consume,
    KeyLookup,
    PermitClaims,
    PermitRefused,
    consume_permit,
    verify_permit_jwt,
)
from missionbound.store.models import Mission as MissionRow
from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store

PERMIT_NAMESPACE = "permit"


class PermitWindowTooShort(ValueError):
    """``valid_until`` leaves less than a whole second after ``now``: a permit with
    ``exp <= iat`` would be refused by every verifier, so none is minted. The PDP denies
    instead (the credential or the Mission is about to end)."""


def mint_permit(
    *,
    signer: SignerKey,
    issuer: str,
    audience: str,
    evaluation_id: str,
    mission: Mapping[str, str],
    policy_version: str,
    tool_id: str,
    action: str,
    parameter_digest: str,
    subject: str,
    client_id: str,
    act: Mapping[str, Any] | None,
    jkt: str | None,
    use_limit: int | None,
    now: datetime,
    valid_until: datetime,
) -> str:
    """The compact JWS of one permit (header ``typ: mission-permit+jwt``).

    ``mission`` is ``{id, origin, authority_hash}`` (the token's ``mission`` claim);
    ``act`` the nested RFC 8693 actor object of the caller's token, None when undelegated;
    ``jkt`` the RFC 7638 thumbprint of the caller's key (the token's ``cnf.jkt``), None for
    a bearer token. ``valid_until`` is the permit window the decision computed (at most
    60 s, the credential's expiry, ``mission_expiry`` and the state's valid-through): ``exp``
    is its whole second, never later. ``use_limit`` is 1 or None.
    """
    if now.tzinfo is None or valid_until.tzinfo is None:
        raise ValueError("now and valid_until must be timezone-aware")
    if valid_until - now > MAX_PERMIT_LIFETIME:
        raise ValueError("a permit lives at most 60 s (PROFILE.md section 12)")
    if use_limit not in (None, 1):
        raise ValueError("use_limit must be 1 or None")
    issued_at = int(now.timestamp())
    expires_at = int(valid_until.timestamp())  # floor: never past valid_until
    if expires_at <= issued_at:
        raise PermitWindowTooShort("the permit window ends within the current second")
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "jti": evaluation_id,
        "iat": issued_at,
        "exp": expires_at,
        "mission": {
            "id": mission["id"],
            "origin": mission["origin"],
            "authority_hash": mission["authority_hash"],
        },
        "policy_version": policy_version,
        "tool_id": tool_id,
        "action": action,
        "parameter_digest": parameter_digest,
        "sub": subject,
        "client_id": client_id,
    }
    if act is not None:
        claims["act"] = dict(act)
    if jkt is not None:
        claims["cnf"] = {"jkt": jkt}
    if use_limit is not None:
        claims["use_limit"] = use_limit
    header = signer.protected_header(typ=PERMIT_TYPE)
    return jwt.encode(header, claims, signer.key, registry=signer.registry)


def consume_in(session: Session) -> Consume:
    """A ``consume`` callable spending permits in ``session``'s transaction: the
    consumption holds only if that transaction commits, so commit it (with the execution
    evidence) before releasing the effect."""

    def consume(jti: str, remember_until: datetime) -> bool:
        return consume_once(session, PERMIT_NAMESPACE, jti, remember_until)

    return consume


class PermitConsumer:
    """A ``consume`` callable spending each permit in its own committed transaction: once
    it returned True, no replica will ever get True for that ``jti``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __call__(self, jti: str, remember_until: datetime) -> bool:
        with self._store.begin() as session:
            return consume_once(session, PERMIT_NAMESPACE, jti, remember_until)


# The Mission row, share-locked to the end of the consuming transaction (as the PDP does):
# a revoke waits for a permit being spent, and a permit spent after the revoke sees it.
_MISSION_STATE_SHARED = (
    select(MissionRow.state, MissionRow.mission_expiry)
    .where(MissionRow.mission_id == bindparam("mission_id"))
    .with_for_update(read=True)
)


def _require_active(session: Session, mission_id: str, now: datetime) -> None:
    """DESIGN.md "Atomic truth": a revoke acknowledged is never followed by an execution.
    A tool runtime that shares the AS's database checks the Mission in the transaction
    that spends the permit, instead of trusting the permit's window alone."""
    row = session.connection().execute(_MISSION_STATE_SHARED,
                                       {"mission_id": mission_id}).first()
    if row is None or not is_effectively_active(row.state, now=now,
                                                mission_expiry=row.mission_expiry):
        raise PermitRefused(MISSION_INACTIVE, "the permit's Mission is no longer active")


def verify_permit(
    consume: Consume | Store,
    token: str,
    *,
    key_for: KeySource | KeyLookup,
    issuer: str,
    audience: str,
    tool_id: str,
    arguments: Mapping[str, Any],
    presenter_jkt: str | None,
    now: datetime,
    require_single_use: bool = False,
) -> PermitClaims:
    """Every check of :func:`~missionbound.protocol.permits.verify_permit_jwt`, then the
    single use: ``permit_consumed`` on a second presentation. ``consume`` is a
    :class:`~missionbound.store.transactions.Store` (one committed transaction of its own
    that also requires the Mission still effectively active: ``mission_inactive``
    otherwise) or any ``consume`` callable (:func:`consume_in` for the caller's
    transaction). A refused permit is never consumed: consumption comes last.
    Raises :class:`~missionbound.protocol.permits.PermitRefused`."""
    permit = verify_permit_jwt(
        token, key_for=key_for, issuer=issuer, audience=audience, tool_id=tool_id,
        arguments=arguments, presenter_jkt=presenter_jkt, now=now,
        require_single_use=require_single_use,
    )
    if isinstance(consume, Store):
        with consume.begin() as session:
            _require_active(session, permit.mission.id, now)
            consume_permit(permit, consume_in(session))
    else:
        consume_permit(permit, consume)
    return permit


__all__ = [
    "PERMIT_NAMESPACE",
    "PermitConsumer",
    "PermitWindowTooShort",
    "consume_in",
    "mint_permit",
    "verify_permit",
]
