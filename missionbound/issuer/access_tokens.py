"""RFC 9068 JWT access tokens carrying the Mission (PROFILE.md section 8).

``typ: at+jwt``, signed with the AS's current key; ``aud`` from the RFC 8707 ``resource``
parameters (one audience when one resource is asked for), ``authorization_details`` the
matching part of the Authority Set, ``cnf.jkt`` when DPoP-bound, and the ``mission`` claim.
``exp`` never passes ``mission_expiry``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc import jwt

from missionbound.issuer.keys import SignerKey
from missionbound.mission.errors import InvalidTarget
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


def select_authority(
    authority_set: Sequence[dict[str, Any]], resources: Sequence[str]
) -> tuple[list[dict[str, Any]], str | list[str]]:
    """The entries for the requested ``resource`` values and the matching ``aud``.

    No ``resource`` parameter: the whole Authority Set, every resource an audience. A
    resource outside the Authority Set is ``invalid_target`` (RFC 8707 section 2).
    """
    granted = list(dict.fromkeys(entry["resource"] for entry in authority_set))
    wanted = list(dict.fromkeys(resources)) or granted
    unknown = [uri for uri in wanted if uri not in granted]
    if unknown:
        raise InvalidTarget(f"resource {unknown[0]!r} is not in the Mission's authority")
    entries = [entry for entry in authority_set if entry["resource"] in wanted]
    # RFC 9068 section 2.2: aud is a string when there is one audience.
    audience: str | list[str] = wanted[0] if len(wanted) == 1 else wanted
    return entries, audience


def mint_access_token(
    *,
    signer: SignerKey,
    issuer: str,
    mission: MissionRecord,
    client_id: str,
    resources: Sequence[str],
    jkt: str | None,
    now: datetime,
    lifetime: timedelta = ACCESS_TOKEN_LIFETIME,
    act: dict[str, Any] | None = None,
) -> MintedToken:
    if mission.subject is None or mission.authority_hash is None:
        raise ValueError("only an approved Mission has tokens")
    entries, audience = select_authority(mission.authority_set, resources)
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
    header = signer.protected_header(typ=ACCESS_TOKEN_TYPE)
    value = jwt.encode(header, claims, signer.key, registry=signer.registry)
    return MintedToken(
        value=value,
        jti=jti,
        claims=claims,
        expires_at=datetime.fromtimestamp(claims["exp"], now.tzinfo),
        audience=audience,
        authorization_details=entries,
    )
