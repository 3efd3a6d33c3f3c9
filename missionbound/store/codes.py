"""Authorization codes (RFC 6749 section 4.1), stored only as hashes, redeemed once.

PKCE (RFC 7636, S256 only: PROFILE.md section 5) and redirect URI checks are Authlib's; this
module keeps what they need and makes redemption exactly-once under concurrency.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.errors import InvalidGrant
from missionbound.store.models import AuthorizationCode
from missionbound.store.validation import require_aware


class AuthorizationCodeReused(InvalidGrant):
    """RFC 6749 section 4.1.2: a used code presented again. ``mission_id`` lets the issuer
    revoke what the first redemption produced."""

    def __init__(self, description: str, *, mission_id: str) -> None:
        super().__init__(description)
        self.mission_id = mission_id


def save_authorization_code(
    session: Session,
    *,
    code_hash: str,
    mission_id: str,
    client_id: str,
    redirect_uri: str,
    code_challenge: str,
    dpop_jkt: str | None,
    expires_at: datetime,
) -> AuthorizationCode:
    if not isinstance(code_hash, str) or not 0 < len(code_hash) <= 128:
        raise InvalidRequest("code hash must be 1 to 128 characters")
    if not isinstance(code_challenge, str) or not 43 <= len(code_challenge) <= 128:
        raise InvalidRequest("code_challenge must be 43 to 128 characters (RFC 7636)")
    require_aware(expires_at, "expires_at")
    code = AuthorizationCode(
        code_hash=code_hash,
        mission_id=mission_id,
        client_id=client_id,
        redirect_uri=redirect_uri,
        code_challenge=code_challenge,
        dpop_jkt=dpop_jkt,
        expires_at=expires_at,
        used_at=None,
    )
    session.add(code)
    session.flush()
    return code


def redeem_authorization_code(
    session: Session, code_hash: str, *, client_id: str, now: datetime
) -> AuthorizationCode:
    """Mark the code used and return it; :class:`InvalidGrant` when unknown, expired, issued
    to another client, or (:class:`AuthorizationCodeReused`) already used."""
    require_aware(now, "now")
    result = session.execute(
        update(AuthorizationCode)
        .where(
            AuthorizationCode.code_hash == code_hash,
            AuthorizationCode.client_id == client_id,
            AuthorizationCode.used_at.is_(None),
            AuthorizationCode.expires_at > now,
        )
        .values(used_at=now),
        execution_options={"synchronize_session": False},
    )
    assert isinstance(result, CursorResult)
    code = session.get(AuthorizationCode, code_hash, populate_existing=True)
    if result.rowcount == 1 and code is not None:
        return code
    if code is None or code.client_id != client_id:
        raise InvalidGrant("unknown authorization code")
    if code.used_at is not None:
        raise AuthorizationCodeReused(
            "authorization code was already used", mission_id=code.mission_id
        )
    raise InvalidGrant("authorization code has expired")
