"""The Authorization Server's signing keys: generation, rotation and the JWKS (RFC 7517).

Keys live in the database (``missionbound.store.keys``), so every replica signs with the same
key and publishes the same set. The ``kid`` is the RFC 7638 JWK thumbprint (SHA-256,
base64url) of the public key: deterministic, and it names the key without revealing anything.
A rotated-out key stops signing at once but stays published for
:data:`RETIRED_KEY_PUBLISHED_FOR`, so whatever it signed keeps verifying until it expires.

Nothing here logs or returns a private JWK member except :func:`signing_key`, whose whole job
is to hand the private key to the signer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from joserfc.jwk import ECKey, JWKRegistry, OKPKey
from joserfc.jws import JWSRegistry
from sqlalchemy.orm import Session

from missionbound.store import keys as key_rows
from missionbound.store.models import SigningKey as StoredKey
from missionbound.store.transactions import Store

# The longest lifetime of anything the AS signs: access tokens, 300 s by default
# (PROFILE.md section 8), plus 60 s for verifiers whose clocks run behind ours. A retired key
# stays in the JWKS that long, so every token it signed still verifies until it expires.
LONGEST_SIGNED_LIFETIME = timedelta(seconds=300)
CLOCK_SKEW = timedelta(seconds=60)
RETIRED_KEY_PUBLISHED_FOR = LONGEST_SIGNED_LIFETIME + CLOCK_SKEW


class SigningAlgorithm(StrEnum):
    """The JWS algorithms the AS signs with (RFC 7518 section 3.4; RFC 8037 section 3.1)."""

    ES256 = "ES256"
    EdDSA = "EdDSA"  # with Ed25519 keys


DEFAULT_ALGORITHM = SigningAlgorithm.ES256

# RFC 7517 section 4.2: the published keys are for signatures only.
KEY_USE = "sig"


class NoSigningKey(LookupError):
    """There is no current signing key: ``serve`` creates one at start (ensure_signing_key)."""


@dataclass(frozen=True)
class GeneratedKey:
    kid: str
    alg: SigningAlgorithm
    private_jwk: dict[str, Any] = field(repr=False)
    public_jwk: dict[str, Any]


@dataclass(frozen=True)
class SignerKey:
    """What a signer needs: put ``kid`` and ``alg`` in the JWS header and sign with ``key``."""

    kid: str
    alg: SigningAlgorithm
    key: ECKey | OKPKey = field(repr=False)

    @property
    def registry(self) -> JWSRegistry:
        # joserfc allows only its "recommended" algorithms by default, and EdDSA is not one.
        return JWSRegistry(algorithms=[self.alg.value])

    def protected_header(self, **extra: Any) -> dict[str, Any]:
        return {**extra, "alg": self.alg.value, "kid": self.kid}


@dataclass(frozen=True)
class KeyInfo:
    """One published key as an operator sees it: never any private material."""

    kid: str
    alg: str
    created_at: datetime
    retired_at: datetime | None
    published_until: datetime | None  # None: published as long as it is current
    signing: bool  # the key new signatures use


class Rotation(NamedTuple):
    new_kid: str
    retired_kids: list[str]


def parse_algorithm(alg: str | SigningAlgorithm) -> SigningAlgorithm:
    try:
        return SigningAlgorithm(alg)
    except ValueError:
        supported = ", ".join(a.value for a in SigningAlgorithm)
        raise ValueError(f"unsupported signing alg {alg!r}: use one of {supported}") from None


def generate_signing_key(alg: str | SigningAlgorithm = DEFAULT_ALGORITHM) -> GeneratedKey:
    """A new key pair for ``alg``, named by its RFC 7638 thumbprint."""
    algorithm = parse_algorithm(alg)
    key: ECKey | OKPKey
    if algorithm is SigningAlgorithm.ES256:
        key = ECKey.generate_key("P-256", private=True)
    else:
        key = OKPKey.generate_key("Ed25519", private=True)
    # RFC 7638 section 3: SHA-256 over the required public members, base64url.
    kid = key.thumbprint()
    labels = {"kid": kid, "alg": algorithm.value, "use": KEY_USE}
    public = {**key.as_dict(private=False), **labels}
    private = {**key.as_dict(private=True), **labels}
    return GeneratedKey(kid=kid, alg=algorithm, private_jwk=private, public_jwk=public)


def ensure_signing_key(
    store: Store, now: datetime, alg: str | SigningAlgorithm = DEFAULT_ALGORITHM
) -> str:
    """The current key's ``kid``, creating a key (in its own transaction) when there is none.

    Two replicas starting together may both create one (PostgreSQL lets both inserts through;
    SQLite's write lock serializes the re-check below): both keys are then valid and published,
    and the newest signs.
    """
    algorithm = parse_algorithm(alg)
    with store.read() as session, session.begin():
        current = key_rows.current_signing_key(session, now=now)
        if current is not None:
            return current.kid
    generated = generate_signing_key(algorithm)
    with store.begin() as session:
        # Re-check inside the write transaction: another process may have created one meanwhile.
        current = key_rows.current_signing_key(session, now=now)
        if current is not None:
            return current.kid
        _add(session, generated, now)
    return generated.kid


def rotate_signing_key(
    store: Store, now: datetime, alg: str | SigningAlgorithm = DEFAULT_ALGORITHM
) -> Rotation:
    """Add a new key, which signs from now on, and retire every key that was current.

    Retired keys stay published until ``now + RETIRED_KEY_PUBLISHED_FOR``.
    """
    generated = generate_signing_key(alg)
    published_until = now + RETIRED_KEY_PUBLISHED_FOR
    with store.begin() as session:
        # Normally one; more after two replicas raced to create the first key.
        previous = [
            row
            for row in key_rows.published_signing_keys(session, now=now)
            if row.retired_at is None
        ]
        for row in previous:
            key_rows.retire_signing_key(
                session, row.kid, now=now, keep_published_until=published_until
            )
        _add(session, generated, now)
    return Rotation(new_kid=generated.kid, retired_kids=[row.kid for row in previous])


def public_jwks(store: Store, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """The JWK Set to publish (RFC 7517 section 5): every key not past its publication
    window, public members only."""
    with store.read() as session, session.begin():
        rows = key_rows.published_signing_keys(session, now=now)
        return {"keys": [_public_member_set(row) for row in rows]}


def signing_key(store: Store, now: datetime) -> SignerKey:
    """The key to sign with now: the newest key that is neither retired nor expired."""
    with store.read() as session, session.begin():
        row = key_rows.current_signing_key(session, now=now)
        if row is None:
            raise NoSigningKey("no current signing key: start `missionbound serve` once")
        kid, alg, private_jwk = row.kid, row.alg, dict(row.private_jwk)
    key = JWKRegistry.import_key(private_jwk)
    if not isinstance(key, ECKey | OKPKey) or not key.is_private:
        raise NoSigningKey(f"signing key {kid} is not a private EC or OKP key")
    return SignerKey(kid=kid, alg=parse_algorithm(alg), key=key)


def list_signing_keys(store: Store, now: datetime) -> list[KeyInfo]:
    """The published keys, oldest first, with which one signs."""
    with store.read() as session, session.begin():
        rows = key_rows.published_signing_keys(session, now=now)
        current = key_rows.current_signing_key(session, now=now)
        return [
            KeyInfo(
                kid=row.kid,
                alg=row.alg,
                created_at=row.created_at,
                retired_at=row.retired_at,
                published_until=row.not_after,
                signing=current is not None and row.kid == current.kid,
            )
            for row in rows
        ]


def _add(session: Session, generated: GeneratedKey, now: datetime) -> None:
    key_rows.add_signing_key(
        session,
        kid=generated.kid,
        alg=generated.alg.value,
        private_jwk=generated.private_jwk,
        public_jwk=generated.public_jwk,
        now=now,
    )


def _public_member_set(row: StoredKey) -> dict[str, Any]:
    # The store refuses a public JWK with private members; filter again anyway, since what
    # leaves here is published to the world.
    public = {
        name: value
        for name, value in row.public_jwk.items()
        if name not in key_rows.PRIVATE_JWK_MEMBERS
    }
    return {**public, "kid": row.kid, "alg": row.alg, "use": KEY_USE}
