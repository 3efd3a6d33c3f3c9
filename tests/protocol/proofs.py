"""Real DPoP proofs for tests: keys generated and proofs signed by joserfc, never by hand.

``forge`` builds deliberately broken proofs (bad headers, unsupported algs) whose signature
part is filler: they must be refused before any signature is checked.
"""

from __future__ import annotations

import base64
import json
import secrets
import warnings
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
IAT = int(NOW.timestamp())
METHOD = "POST"
URL = "https://issuer.example/token"

# A header member or claim set to DROP is left out of the proof.
DROP: Any = object()


def generate_key(alg: str = "ES256") -> Key:
    """A new private key of the type ``alg`` signs with."""
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    if alg == "ES384":
        return ECKey.generate_key("P-384", private=True)
    if alg in ("EdDSA", "Ed25519"):
        return OKPKey.generate_key("Ed25519", private=True)
    if alg in ("PS256", "RS256"):
        return RSAKey.generate_key(2048, private=True)
    raise ValueError(alg)


def public_jwk(key: Key) -> dict[str, Any]:
    return dict(key.as_dict(private=False))


def make_proof(
    key: Key,
    *,
    alg: str = "ES256",
    header: dict[str, Any] | None = None,
    jwk: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A proof signed with ``key``. Defaults: ``POST`` to :data:`URL` at :data:`NOW` with a
    fresh random jti; ``header`` and ``claims`` override (DROP removes), ``jwk`` replaces the
    header's key (by default the public half of ``key``)."""
    protected = _merge(
        {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key) if jwk is None else jwk},
        header or {},
    )
    payload = _merge(
        {"jti": secrets.token_urlsafe(16), "htm": METHOD, "htu": URL, "iat": IAT}, claims
    )
    registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
    with warnings.catch_warnings():
        # joserfc warns that "EdDSA" is deprecated (RFC 9864); clients still send it.
        warnings.simplefilter("ignore", SecurityWarning)
        return jws.serialize_compact(protected, json.dumps(payload), key, registry=registry)


def forge(header: dict[str, Any], claims: dict[str, Any] | None = None) -> str:
    """A compact JWS with the given header and claims and a meaningless signature."""
    body = {"jti": "forged", "htm": METHOD, "htu": URL, "iat": IAT} if claims is None else claims
    return forge_raw(json.dumps(header), json.dumps(body))


def forge_raw(header_json: str, claims_json: str, signature: bytes = b"not a signature") -> str:
    return ".".join(
        b64url(part) for part in (header_json.encode(), claims_json.encode(), signature)
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {name: value for name, value in merged.items() if value is not DROP}
