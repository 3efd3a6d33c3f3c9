"""The AS's signing keys (JWKS, RFC 7517). A rotated-out key is retired but stays published
until ``not_after`` so that tokens it signed keep verifying (``missionbound keys rotate``)."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import SigningKey
from missionbound.store.validation import require_aware

# RFC 7518 section 6: members that only a private key has. None may reach a JWKS.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def add_signing_key(
    session: Session,
    *,
    kid: str,
    alg: str,
    private_jwk: dict[str, Any],
    public_jwk: dict[str, Any],
    now: datetime,
    not_after: datetime | None = None,
) -> SigningKey:
    if not isinstance(kid, str) or not 0 < len(kid) <= 255:
        raise InvalidRequest("kid must be 1 to 255 characters")
    if not isinstance(alg, str) or not 0 < len(alg) <= 16:
        raise InvalidRequest("alg must be 1 to 16 characters")
    if not isinstance(public_jwk, dict) or not isinstance(private_jwk, dict):
        raise InvalidRequest("keys must be JWK objects")
    leaked = PRIVATE_JWK_MEMBERS & set(public_jwk)
    if leaked:
        raise InvalidRequest(f"public JWK carries private members: {sorted(leaked)}")
    require_aware(now, "now")
    if session.get(SigningKey, kid) is not None:
        raise InvalidRequest(f"a signing key with kid {kid!r} exists")
    key = SigningKey(
        kid=kid,
        alg=alg,
        private_jwk=copy.deepcopy(private_jwk),
        public_jwk=copy.deepcopy(public_jwk),
        created_at=now,
        retired_at=None,
        not_after=not_after,
    )
    session.add(key)
    session.flush()
    return key


def current_signing_key(session: Session, *, now: datetime) -> SigningKey | None:
    """The newest key that is neither retired nor past ``not_after``: the one to sign with."""
    return session.scalars(
        select(SigningKey)
        .where(
            SigningKey.retired_at.is_(None),
            or_(SigningKey.not_after.is_(None), SigningKey.not_after > now),
        )
        .order_by(SigningKey.created_at.desc(), SigningKey.kid.desc())
        .limit(1)
    ).first()


def published_signing_keys(session: Session, *, now: datetime) -> list[SigningKey]:
    """Keys whose public half belongs in the JWKS: all not past ``not_after``."""
    return list(
        session.scalars(
            select(SigningKey)
            .where(or_(SigningKey.not_after.is_(None), SigningKey.not_after > now))
            .order_by(SigningKey.created_at, SigningKey.kid)
        )
    )


def retire_signing_key(
    session: Session, kid: str, *, now: datetime, keep_published_until: datetime
) -> SigningKey:
    """Stop signing with ``kid``; keep it in the JWKS until ``keep_published_until``."""
    key = session.get(SigningKey, kid)
    if key is None:
        raise InvalidRequest(f"no signing key {kid!r}")
    require_aware(keep_published_until, "keep_published_until")
    key.retired_at = now
    key.not_after = keep_published_until
    session.flush()
    return key
