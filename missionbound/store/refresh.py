"""Refresh tokens (PROFILE.md section 8): opaque, stored as hashes, bound to the Mission,
rotated on every use; presenting a rotated token again revokes its whole family."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.errors import InvalidGrant, RefreshTokenReused
from missionbound.store.models import RefreshToken, RefreshTokenFamily
from missionbound.store.transactions import run_after_rollback
from missionbound.store.validation import require_aware


def start_refresh_family(
    session: Session,
    *,
    family_id: str,
    mission_id: str,
    client_id: str,
    dpop_jkt: str | None,
    now: datetime,
) -> RefreshTokenFamily:
    """A new family, for the refresh token issued at code redemption."""
    if not isinstance(family_id, str) or not 0 < len(family_id) <= 255:
        raise InvalidRequest("family_id must be 1 to 255 characters")
    require_aware(now, "now")
    family = RefreshTokenFamily(
        family_id=family_id,
        mission_id=mission_id,
        client_id=client_id,
        dpop_jkt=dpop_jkt,
        created_at=now,
        revoked_at=None,
    )
    session.add(family)
    session.flush()
    return family


def save_refresh_token(
    session: Session,
    *,
    token_hash: str,
    family_id: str,
    issued_at: datetime,
    expires_at: datetime,
) -> None:
    """A member of ``family_id``; Mission, client and DPoP binding come from the family
    (read from the session when the caller already holds it: the rotation locked it)."""
    if not isinstance(token_hash, str) or not 0 < len(token_hash) <= 128:
        raise InvalidRequest("token hash must be 1 to 128 characters")
    require_aware(issued_at, "issued_at")
    require_aware(expires_at, "expires_at")
    family = session.get(RefreshTokenFamily, family_id)
    if family is None:
        raise InvalidRequest("unknown refresh token family")
    if family.revoked_at is not None:
        raise InvalidGrant("the refresh token family is revoked")
    # Append-only: one INSERT on the session's connection (after any pending ORM change,
    # such as a family just started), no ORM unit of work.
    session.flush()
    session.connection().execute(
        insert(RefreshToken).values(
            token_hash=token_hash,
            family_id=family_id,
            mission_id=family.mission_id,
            client_id=family.client_id,
            dpop_jkt=family.dpop_jkt,
            issued_at=issued_at,
            expires_at=expires_at,
            rotated_at=None,
            revoked_at=None,
        )
    )


def lock_refresh_family(session: Session, family_id: str) -> None:
    """Lock the family's row, whatever its state, before touching any of its token rows.

    Every writer of a family (a rotation, a revocation after a replay) queues on this one
    row. Without it, on PostgreSQL, a replay revoking the family (a multi-row UPDATE, which
    locks rows in scan order) and a late rotation of one of its tokens could deadlock, and
    the victim's request failed (50 racing refreshes, tests/issuer/test_concurrency.py).
    On SQLite the write transaction already serializes writers."""
    session.execute(
        select(RefreshTokenFamily.family_id)
        .where(RefreshTokenFamily.family_id == family_id)
        .with_for_update()
    )


def rotate_refresh_token(
    session: Session, token_hash: str, *, client_id: str, now: datetime
) -> RefreshToken:
    """Use a refresh token: mark it rotated (exactly once) and return it; the caller then
    gates the derivation and saves the successor with :func:`save_refresh_token`.

    A token already rotated is a replay: its family is revoked (in this transaction and,
    since the caller will roll back on the error, again after the rollback) and
    :class:`RefreshTokenReused` is raised. Unknown, expired, revoked or foreign tokens get
    :class:`InvalidGrant`.
    """
    require_aware(now, "now")
    # The family's row, found through the token and locked in the same statement (FOR
    # UPDATE OF the family only), before the token row is touched. It stays in the session:
    # saving the successor (save_refresh_token) reads it from there.
    session.execute(
        select(RefreshTokenFamily)
        .join(RefreshToken, RefreshToken.family_id == RefreshTokenFamily.family_id)
        .where(RefreshToken.token_hash == token_hash)
        .with_for_update(of=RefreshTokenFamily)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    # The consuming UPDATE is the redemption (exactly one of two racing uses matches), and
    # RETURNING hands back the row it rotated: no read after it.
    rotated = session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.client_id == client_id,
            RefreshToken.rotated_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(rotated_at=now)
        .returning(RefreshToken),
        execution_options={"synchronize_session": False, "populate_existing": True},
    ).scalar_one_or_none()
    if rotated is not None:
        return rotated
    token = session.get(RefreshToken, token_hash, populate_existing=True)
    if token is None or token.client_id != client_id:
        raise InvalidGrant("unknown refresh token")
    if token.revoked_at is not None:
        raise InvalidGrant("refresh token was revoked")
    if token.rotated_at is not None:
        family_id = token.family_id
        revoke_refresh_family(session, family_id, now=now)
        run_after_rollback(
            session,
            f"revoke-family:{family_id}",
            lambda fresh: revoke_refresh_family(fresh, family_id, now=now),
        )
        raise RefreshTokenReused("refresh token was already used; its family is revoked")
    raise InvalidGrant("refresh token has expired")


def revoke_refresh_family(session: Session, family_id: str, *, now: datetime) -> int:
    """Revoke a family and every live member; returns how many tokens were revoked."""
    lock_refresh_family(session, family_id)
    session.execute(
        update(RefreshTokenFamily)
        .where(RefreshTokenFamily.family_id == family_id, RefreshTokenFamily.revoked_at.is_(None))
        .values(revoked_at=now),
        execution_options={"synchronize_session": False},
    )
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now),
        execution_options={"synchronize_session": False},
    )
    assert isinstance(result, CursorResult)
    return result.rowcount


def revoke_refresh_token(session: Session, token_hash: str, *, now: datetime) -> bool:
    """RFC 7009 revocation of one refresh token revokes its family (the grant)."""
    token = session.get(RefreshToken, token_hash)
    if token is None:
        return False
    revoke_refresh_family(session, token.family_id, now=now)
    return True
