"""Issued token ids: every access token, ID-JAG and other minted JWT by ``jti``, with its
Mission (issuance digest section 12: ``jti`` joins RS logs to issuance), so revocation can
name the tokens bound to a Mission (CAEP ``session-revoked``, PROFILE.md section 10)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import IssuedToken
from missionbound.store.upsert import insert_ignoring_conflicts
from missionbound.store.validation import require_aware

TOKEN_KINDS = frozenset({"access_token", "refresh_token", "id_jag", "txn_token", "permit"})


def record_issued_token(
    session: Session,
    *,
    jti: str,
    mission_id: str,
    client_id: str,
    kind: str,
    aud: str | list[str] | None,
    issued_at: datetime,
    expires_at: datetime,
    grant_id: str | None = None,
) -> None:
    """Record a minted token's ``jti``; a ``jti`` recorded before is :class:`InvalidRequest`
    (the primary key decides, in the one ``INSERT``: no read first)."""
    if not isinstance(jti, str) or not 0 < len(jti) <= 255:
        raise InvalidRequest("jti must be 1 to 255 characters")
    if kind not in TOKEN_KINDS:
        raise InvalidRequest(f"unknown token kind {kind!r}")
    aud_value: Any = list(aud) if isinstance(aud, (list, tuple)) else aud
    require_aware(issued_at, "issued_at")
    require_aware(expires_at, "expires_at")
    inserted = insert_ignoring_conflicts(
        session,
        IssuedToken,
        {
            "jti": jti,
            "mission_id": mission_id,
            "client_id": client_id,
            "kind": kind,
            "aud": aud_value,
            "issued_at": issued_at,
            "expires_at": expires_at,
            "revoked_at": None,
            "grant_id": grant_id,
        },
    )
    if not inserted:
        raise InvalidRequest("jti was already issued")


def get_issued_token(session: Session, jti: str) -> IssuedToken | None:
    return session.get(IssuedToken, jti)


def revoke_issued_token(session: Session, jti: str, *, now: datetime) -> bool:
    """RFC 7009 for a JWT access token: mark it revoked; False when unknown. Revoking twice
    keeps the first instant."""
    require_aware(now, "now")
    token = session.get(IssuedToken, jti)
    if token is None:
        return False
    if token.revoked_at is None:
        token.revoked_at = now
        session.flush()
    return True


def revoke_grant_tokens(session: Session, grant_id: str, *, now: datetime) -> int:
    """Revoke every unrevoked token minted from the grant ``grant_id``; returns how many."""
    require_aware(now, "now")
    result = session.execute(
        update(IssuedToken)
        .where(IssuedToken.grant_id == grant_id, IssuedToken.revoked_at.is_(None))
        .values(revoked_at=now),
        execution_options={"synchronize_session": False},
    )
    assert isinstance(result, CursorResult)
    return result.rowcount


def tokens_for_mission(
    session: Session, mission_id: str, *, unexpired_at: datetime | None = None
) -> list[IssuedToken]:
    """Tokens minted for the Mission, oldest first; only those still valid at
    ``unexpired_at`` when given."""
    statement = select(IssuedToken).where(IssuedToken.mission_id == mission_id)
    if unexpired_at is not None:
        statement = statement.where(IssuedToken.expires_at > unexpired_at)
    return list(session.scalars(statement.order_by(IssuedToken.issued_at, IssuedToken.jti)))
