"""RFC 9068 JWT access tokens carrying the Mission (PROFILE.md section 8).

``typ: at+jwt``, signed with the AS's current key; ``aud`` and ``authorization_details`` as
the token request narrowed them (``token_narrowing.py``), ``cnf.jkt`` when DPoP-bound, and
the ``mission`` claim.
``exp`` never passes ``mission_expiry``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc import jwt

from missionbound.issuer.keys import SignerKey
from missionbound.mission.record import MissionRecord

# PROFILE.md section 8: default lifetime 300 s.
ACCESS_TOKEN_LIFETIME = timedelta(seconds=300)
ACCESS_TOKEN_TYPE = "at+jwt"


@dataclass(frozen=True)
class MintedToken:
    value: str
    jti: str
    claims: dict[str, Any]
    expires_at: datetime
    audience: str | list[str]
    authorization_details: list[dict[str, Any]]


def new_jti() -> str:
    return secrets.token_urlsafe(24)


def mint_access_token(
    *,
    signer: SignerKey,
    issuer: str,
    mission: MissionRecord,
    client_id: str,
    entries: list[dict[str, Any]],
    audience: str | list[str],
    jkt: str | None,
    now: datetime,
    lifetime: timedelta = ACCESS_TOKEN_LIFETIME,
    act: dict[str, Any] | None = None,
) -> MintedToken:
    if mission.subject is None or mission.authority_hash is None:
        raise ValueError("only an approved Mission has tokens")
    issued_at = int(now.timestamp())
    expires_at = min(now + lifetime, mission.mission_expiry)
    jti = new_jti()
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": mission.subject.sub,
        "aud": audience,
        "client_id": client_id,
        "iat": issued_at,
        "exp": int(expires_at.timestamp()),
        "jti": jti,
        "authorization_details": entries,
        "mission": {
            "id": mission.mission_id,
            "origin": mission.origin,
            "authority_hash": mission.authority_hash,
        },
    }
    if jkt is not None:
        claims["cnf"] = {"jkt": jkt}
    if act is not None:
        claims["act"] = act
    return sign_access_token(signer, claims, now)


def sign_access_token(signer: SignerKey, claims: dict[str, Any], now: datetime) -> MintedToken:
    """Sign ``claims`` as an RFC 9068 access token (``typ: at+jwt``) with the AS's key.

    The lower half of :func:`mint_access_token`, for tokens whose claims do not come from a
    Mission record of this AS: a Resource AS's local tokens (issuer/jwt_bearer.py) carry
    the origin's ``mission`` claim verbatim. ``claims`` must hold ``jti``, ``exp``, ``aud``
    and ``authorization_details``."""
    header = signer.protected_header(typ=ACCESS_TOKEN_TYPE)
    value = jwt.encode(header, claims, signer.key, registry=signer.registry)
    return MintedToken(
        value=value,
        jti=claims["jti"],
        claims=claims,
        expires_at=datetime.fromtimestamp(claims["exp"], now.tzinfo),
        audience=claims["aud"],
        authorization_details=claims["authorization_details"],
    )
